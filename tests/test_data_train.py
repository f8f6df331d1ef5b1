"""Training data readers: LLM-Adapters JSON/JSONL, tokenization rules, classification tables, decontamination."""

from __future__ import annotations

import json

import pytest

from adapterlab.data.classification import label_names, read_labelled
from adapterlab.data.decontaminate import decontaminate, normalize_question, overlap_counts
from adapterlab.data.instruction import DataError, read_instructions, tokenize_example
from adapterlab.data.splits import holdout, subsample
from adapterlab.data.templates import build_prompt
from train_helpers import make_tokenizer

RECORD = {"instruction": "tom had 3 apples and got 2 more. how many apples?", "input": "",
          "output": "tom had 3 plus 2 apples. The answer is 5.", "answer": "5"}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_json_and_jsonl_read_the_same_records(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([RECORD, RECORD]))
    (tmp_path / "a.jsonl").write_text(json.dumps(RECORD) + "\n\n" + json.dumps(RECORD) + "\n")
    assert read_instructions([tmp_path / "a.json"]) == read_instructions(str(tmp_path / "a.jsonl")) == [RECORD] * 2


@pytest.mark.parametrize("text, match", [
    ('[{"instruction": "a", "output": "b"}', r"bad.json is not valid JSON: .* line 1"),
    ('{"instruction": "a", "output": "b"}\n{"instruction": oops}', r"bad.json, line 2: not valid JSON"),
    ('[{"instruction": "a"}]', r"record 0: missing field 'output'"),
    ('[{"instruction": "a", "output": "b"}, {"instruction": 3, "output": "b"}]', r"record 1: field 'instruction' must be a string"),
    ('[1]', r"record 0: expected a JSON object"),
    ('', r"bad.json is empty"),
    ('[]', r"No training records"),
])
def test_bad_instruction_files_name_file_record_and_field(tmp_path, text, match):
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(DataError, match=match):
        read_instructions([tmp_path / "bad.json"])


def test_loss_on_response_only_and_eos_appended(tokenizer):
    item = tokenize_example(RECORD, tokenizer, cutoff_len=512)
    prompt_ids = tokenizer(build_prompt(RECORD))["input_ids"]
    assert item["input_ids"][: len(prompt_ids)] == prompt_ids
    assert item["input_ids"][-1] == tokenizer.eos_token_id
    assert item["labels"][: len(prompt_ids)] == [-100] * len(prompt_ids)
    assert item["labels"][len(prompt_ids):] == item["input_ids"][len(prompt_ids):]
    whole = tokenize_example(RECORD, tokenizer, cutoff_len=512, train_on_inputs=True)
    assert whole["labels"] == whole["input_ids"] == item["input_ids"]


def test_cutoff_truncates_without_eos(tokenizer):
    full = tokenize_example(RECORD, tokenizer, cutoff_len=512)
    cut = tokenize_example(RECORD, tokenizer, cutoff_len=len(full["input_ids"]) - 3)
    assert len(cut["input_ids"]) == len(full["input_ids"]) - 3
    assert cut["input_ids"] == full["input_ids"][:-3] and cut["input_ids"][-1] != tokenizer.eos_token_id
    assert tokenize_example(RECORD, tokenizer, cutoff_len=512, add_eos=False)["input_ids"] == full["input_ids"][:-1]


def test_chat_template_prompt_is_not_given_a_second_bos(tokenizer):
    tokenizer.chat_template = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %} Response:{% endif %}"
    item = tokenize_example(RECORD, tokenizer, template="chat", cutoff_len=512)
    assert item["input_ids"][0] == tokenizer.bos_token_id and item["input_ids"][1] != tokenizer.bos_token_id


def test_sst2_tsv_with_quotes_reads_and_maps_labels(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text('label\tcontent\n1\tit \'s a " charming " film .\n0\tdull .\n1\tfun\n')
    rows, column = read_labelled([path])
    assert column == "content" and rows[0] == {"text": 'it \'s a " charming " film .', "label": "1"}
    assert label_names(rows) == ["0", "1"]
    assert label_names([{"label": "10"}, {"label": "9"}]) == ["9", "10"]


def test_csv_and_json_tables_with_named_columns(tmp_path):
    (tmp_path / "a.csv").write_text('review,stars\n"good, really",pos\nbad,neg\n')
    (tmp_path / "a.jsonl").write_text('{"review": "good, really", "stars": "pos"}\n{"review": "bad", "stars": "neg"}\n')
    for name in ("a.csv", "a.jsonl"):
        rows, _ = read_labelled([tmp_path / name], text_column="review", label_column="stars")
        assert rows == [{"text": "good, really", "label": "pos"}, {"text": "bad", "label": "neg"}]


@pytest.mark.parametrize("text, match", [
    ("label\tsentence\n1\tok\n0\n", r"line 3: 2 columns expected"),
    ("label\tsentence\n1\t\n", r"record 0: missing or empty field 'sentence'"),
    ("", r"is empty"),
])
def test_bad_tables_name_the_problem(tmp_path, text, match):
    (tmp_path / "t.tsv").write_text(text)
    with pytest.raises(DataError, match=match):
        read_labelled([tmp_path / "t.tsv"])


def test_decontamination_matches_normalised_questions(tmp_path):
    train = [RECORD, {**RECORD, "instruction": "Something else entirely?"}]
    (tmp_path / "test.json").write_text(json.dumps([{**RECORD, "instruction": "  Tom had 3 apples, and got 2 MORE -- how many apples"}]))
    assert normalize_question(RECORD) == "tom had 3 apples and got 2 more how many apples"
    kept, dropped = decontaminate(train, [tmp_path / "test.json"])
    assert kept == train[1:] and dropped == {str(tmp_path / "test.json"): 1}
    assert overlap_counts(train, [tmp_path / "test.json"]) == {str(tmp_path / "test.json"): 1}


def test_splits_are_seeded_and_disjoint():
    items = list(range(50))
    train, dev = holdout(items, 10, seed=1)
    assert len(dev) == 10 and sorted(train + dev) == items and (train, dev) == holdout(items, 10, seed=1)
    assert len(holdout(items, 0.2, seed=1)[1]) == 10
    assert subsample(items, 5, seed=3) == subsample(items, 5, seed=3) and len(subsample(items, 5, seed=3)) == 5
    with pytest.raises(DataError, match="leaves no training data"):
        holdout(items, 50, seed=1)
