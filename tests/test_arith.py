"""The built-in arithmetic problems: format, correct answers, determinism, and train/test disjointness."""

from __future__ import annotations

import json
import re

import pytest

from adapterlab.data.arith import NAMES, OBJECTS, TEMPLATES, generate_problems, split_of, write_problems

EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


def test_records_have_the_llm_adapters_format():
    for record in generate_problems(200, "train"):
        assert set(record) == {"instruction", "input", "output", "answer"}
        assert record["input"] == "" and record["instruction"].endswith("?")
        assert record["output"].endswith(f"The answer is {record['answer']}.")
        assert record["answer"].isdigit()


@pytest.mark.parametrize("split", ["train", "test"])
def test_worked_answers_are_correct(split):
    for record in generate_problems(400, split, seed=3):
        equations = EQUATION.findall(record["output"])
        assert equations, record
        for a, op, b, result in equations:
            assert OPS[op](int(a), int(b)) == int(result), record
        assert equations[-1][3] == record["answer"]
        question_numbers = re.findall(r"\d+", record["instruction"])
        assert {equations[0][0], equations[0][2]} <= set(question_numbers), record  # it solves this question


def test_same_seed_same_problems_other_seed_other_problems():
    assert generate_problems(50, "train", seed=1) == generate_problems(50, "train", seed=1)
    assert generate_problems(50, "train", seed=1) != generate_problems(50, "train", seed=2)


def problem_key(record: dict[str, str]) -> tuple[str, tuple[str, ...]]:
    """The underlying problem of a record: its wording with names, objects and numbers masked, and its numbers."""
    text = record["instruction"]
    for word in sorted(NAMES + OBJECTS, key=len, reverse=True):
        text = re.sub(rf"\b{word}\b", "_", text)
    return re.sub(r"\d+", "#", text), tuple(re.findall(r"\d+", record["instruction"]))


def test_problems_are_distinct_and_every_template_is_used():
    records = generate_problems(800, "train")
    assert len({problem_key(r) for r in records}) == 800
    assert len({problem_key(r)[0] for r in records}) == len(TEMPLATES)


def test_train_and_test_never_share_a_problem_whatever_the_seeds():
    train = [r for seed in (0, 1) for r in generate_problems(3000, "train", seed)]
    test = [r for seed in (0, 7) for r in generate_problems(1000, "test", seed)]
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in test}
    # Stronger: no (template, numbers) problem is in both, even reworded with other names and objects.
    assert not {problem_key(r) for r in train} & {problem_key(r) for r in test}
    for template in TEMPLATES:  # the split is a property of the problem, and every template feeds both splits
        assert {split_of(template.name, numbers) for numbers in template.numbers()} == {"train", "test"}


def test_write_problems_writes_a_json_list(tmp_path):
    path = write_problems(tmp_path / "arith" / "train.json", 20, "train", seed=4)
    assert json.loads(path.read_text()) == generate_problems(20, "train", seed=4)


def test_bad_requests_are_named():
    with pytest.raises(ValueError, match="Unknown split"):
        generate_problems(5, "dev")
    with pytest.raises(ValueError, match="distinct ones exist"):
        generate_problems(10**6, "test")
