"""The multiple-choice parser: every supported format gives (question, choices, gold index); bad rows are named."""

from __future__ import annotations

import json

import pytest

from adapterlab.data.choices import ChoiceItem, read_choice_items
from adapterlab.data.classification import read_labelled
from adapterlab.errors import DataError

LLM_ADAPTERS = {
    "piqa": ("Please choose the correct solution to the question: open a jar\n\nSolution1: twist the lid\n\n"
             "Solution2: eat the lid\n\nAnswer format: solution1/solution2", "solution1",
             ChoiceItem("open a jar", ("twist the lid", "eat the lid"), 0)),
    "arc": ("Please choose the correct answer to the question: Which is a gas?\n\nAnswer1: ice Answer2: steam "
            "Answer3: rock Answer4: wood\n\nAnswer format: answer1/answer2/answer3/answer4", "answer2",
            ChoiceItem("Which is a gas?", ("ice", "steam", "rock", "wood"), 1)),
    "siqa": ("Please choose the correct answer to the question: Carson moved. How is Carson?\n\nAnswer1: mobile\n"
             "Answer2: anxious\nAnswer3: lonely\n\nAnswer format: answer1/answer2/answer3", "answer3",
             ChoiceItem("Carson moved. How is Carson?", ("mobile", "anxious", "lonely"), 2)),
    "winogrande": ("Please choose the correct answer to fill in the blank to complete the given sentence: Ian ate "
                   "_ soup.\n\nOption1: Ian Option2: Dennis\n\nAnswer format: option1/option2", "option2",
                   ChoiceItem("Ian ate _ soup.", ("Ian", "Dennis"), 1)),
    "hellaswag": ("Please choose the correct ending to complete the given sentence: Drums: A man\n\nEnding1: "
                  "sings.\n\nEnding2: plays.\n\nEnding3: runs.\n\nEnding4: sits.\n\nAnswer format: "
                  "ending1/ending2/ending3/ending4", "ending2",
                  ChoiceItem("Drums: A man", ("sings.", "plays.", "runs.", "sits."), 1)),
    "boolq": ("Please answer the following question with true or false, question: is ice cold?\n\nAnswer format: "
              "true/false", "true", ChoiceItem("is ice cold?", ("true", "false"), 0)),
}


@pytest.mark.parametrize("name", list(LLM_ADAPTERS))
def test_llm_adapters_records(name, tmp_path):
    """Each LLM-Adapters commonsense format: choices out of the instruction, the question without the template."""
    instruction, answer, expected = LLM_ADAPTERS[name]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps([{"instruction": instruction, "input": "", "output": "", "answer": answer}]))
    assert read_choice_items(path) == [expected]


@pytest.mark.parametrize("rows, expected", [
    ([{"question": "q", "choices": ["a", "b", "c"], "label": 2}], (("a", "b", "c"), 2)),
    ([{"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"}], (("a", "b"), 1)),
    ([{"goal": "q", "sol1": "a", "sol2": "b", "label": 0}], (("a", "b"), 0)),          # PIQA (HF)
    ([{"sentence": "q", "option1": "a", "option2": "b", "answer": "2"}], (("a", "b"), 1)),  # WinoGrande: from 1
    ([{"question": "q", "A": "a", "B": "b", "C": "c", "answer": "C"}], (("a", "b", "c"), 2)),
    ([{"question": "q", "answerA": "a", "answerB": "b", "answerC": "c", "label": "3"}], (("a", "b", "c"), 2)),
    ([{"question": "q", "choices": ["a", "b"], "label": "b"}], (("a", "b"), 1)),
])
def test_plain_json_records(rows, expected, tmp_path):
    """Lists, HF ARC's text/label dict, numbered and lettered columns; labels by index, letter, name or text."""
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    [item] = read_choice_items(path)
    assert (item.question, item.choices, item.gold) == ("q", *expected)


def test_csv_with_choice_columns_and_named_columns(tmp_path):
    """A CSV with choice1..choice3; --text-column / --label-column name the question and the label."""
    path = tmp_path / "copa.csv"
    path.write_text("premise,question,choice1,choice2,choice3,gold\nit rained,cause,clouds,sun,sand,0\n"
                    "he slept,effect,rested,ran,sang,1\n")
    items = read_choice_items(path, question_column="premise", label_column="gold")
    assert items == [ChoiceItem("it rained", ("clouds", "sun", "sand"), 0),
                     ChoiceItem("he slept", ("rested", "ran", "sang"), 1)]


@pytest.mark.reliability
@pytest.mark.parametrize("row, match", [
    ({"question": "q", "choices": ["a"], "label": 0}, "at least two"),
    ({"question": "q", "choices": ["a", "b"], "label": 5}, "out of range"),
    ({"question": "q", "choices": ["a", "b"], "label": "maybe"}, "not a choice"),
    ({"question": "q", "label": 0}, "no choices found"),
    ({"choices": ["a", "b"], "label": 0}, "no question column"),
    ({"question": "", "choices": ["a", "b"], "label": 0}, "question is empty"),
    ({"instruction": "Pick: Answer1: a Answer3: b", "answer": "answer1"}, "not numbered"),
])
def test_bad_rows_give_one_line_errors_naming_file_and_record(row, match, tmp_path):
    """bad multiple-choice row (one choice, label out of range or unknown, no choices, no question) -> one-line
    error naming the file and the record"""
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "ok", "choices": ["a", "b"], "label": 0}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as caught:
        read_choice_items(path)
    message = str(caught.value)
    assert f"{path}, record 1" in message and match in message and "\n" not in message, message


@pytest.mark.reliability
def test_integer_labels_that_could_count_from_0_or_1_are_refused(tmp_path):
    """integer labels that never use 0 nor the last choice's number -> one-line error saying they are ambiguous"""
    path = tmp_path / "ambiguous.jsonl"
    path.write_text(json.dumps({"question": "q", "choice1": "a", "choice2": "b", "choice3": "c", "label": 1}) + "\n")
    with pytest.raises(DataError, match="could count from 0 or from 1"):
        read_choice_items(path)


def test_seq_cls_reads_boolq_as_question_and_answer(tmp_path):
    """An LLM-Adapters BoolQ file for seq-cls: text = the question without the template, label = the answer;
    an explicit --text-column still wins."""
    instruction, _, _ = LLM_ADAPTERS["boolq"]
    path = tmp_path / "boolq.json"
    path.write_text(json.dumps([{"instruction": instruction, "input": "", "output": "x", "answer": "true"},
                                {"instruction": instruction.replace("ice cold", "fire cold"), "input": "",
                                 "output": "y", "answer": "false"}]))
    rows, _ = read_labelled([str(path)])
    assert rows == [{"text": "is ice cold?", "label": "true"}, {"text": "is fire cold?", "label": "false"}]
    rows, column = read_labelled([str(path)], text_column="output", label_column="answer")
    assert column == "output" and [r["text"] for r in rows] == ["x", "y"]
