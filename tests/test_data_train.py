"""Training data readers: LLM-Adapters JSON/JSONL, tokenization rules, classification tables, decontamination."""

from __future__ import annotations

import json
import re

import pytest

from adapterlab.data.classification import label_names, read_labelled
from adapterlab.data.decontaminate import decontaminate, normalize_question, overlap_counts
from adapterlab.data.instruction import read_instructions, tokenize_example
from adapterlab.errors import DataError, MissingPathError
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


# ---------------------------------------------------------------- bad files, the same message from every reader

def read_audio_labels(path):
    from adapterlab.data.audio import labels_from_csv

    return labels_from_csv([], path.parent, path)


# reader name -> (file name, read function, a valid file's text)
ROWS = [{"label": "1", "sentence": "fine"}, {"label": "0", "sentence": "dull"}]
READERS = {
    "instruction JSON": ("train.json", lambda p: read_instructions([p]), json.dumps([RECORD])),
    "instruction JSONL": ("train.jsonl", lambda p: read_instructions([p]), json.dumps(RECORD) + "\n"),
    "classification CSV": ("train.csv", lambda p: read_labelled([p]), "label,sentence\n1,fine\n0,dull\n"),
    "classification TSV": ("train.tsv", lambda p: read_labelled([p]), "label\tsentence\n1\tfine\n0\tdull\n"),
    "classification JSON": ("train.json", lambda p: read_labelled([p]), json.dumps(ROWS)),
    "classification JSONL": ("train.jsonl", lambda p: read_labelled([p]), "".join(json.dumps(r) + "\n" for r in ROWS)),
    "audio labels CSV": ("labels.csv", read_audio_labels, "file,label\na.wav,1\n"),
}
JSON_READERS = [name for name, (file, _, _) in READERS.items() if file.endswith((".json", ".jsonl"))]


@pytest.mark.reliability
@pytest.mark.parametrize("reader", READERS)
def test_non_utf8_file_is_named_with_the_byte_offset(tmp_path, reader):
    """Latin-1 data file (not UTF-8) -> one-line error naming the file, the byte offset and line"""
    name, read, text = READERS[reader]
    path = tmp_path / name
    data = text.encode("utf-8")
    cut = text.index("\n") if "\n" in text[:-1] else 9  # on the second line, or in the first record
    path.write_bytes(data[:cut] + "caf\xe9 ".encode("latin-1") + data[cut:])
    with pytest.raises(DataError, match=rf"{name} is not UTF-8 text: byte 0xe9 at offset {cut + 3} \(line \d+\)"):
        read(path)


@pytest.mark.reliability
@pytest.mark.parametrize("reader", READERS)
def test_folder_given_as_data_file_says_it_is_a_folder(tmp_path, reader):
    """a folder given where a data file belongs -> "is a folder, not a file" (not "does not exist")"""
    name, read, _ = READERS[reader]
    (tmp_path / name).mkdir()
    with pytest.raises(MissingPathError, match=f"{name} is a folder, not a file"):
        read(tmp_path / name)
    with pytest.raises(MissingPathError, match="missing.json does not exist"):
        read(tmp_path / "missing.json")


@pytest.mark.reliability
@pytest.mark.parametrize("indent", [None, 1], ids=["one line", "pretty-printed"])
@pytest.mark.parametrize("reader", JSON_READERS)
def test_json_object_wrapping_the_records_is_named(tmp_path, reader, indent):
    """{"data": [...]} JSON object file -> "holds a JSON object ... expected a list of records or one per line\""""
    name, read, text = READERS[reader]
    records = [json.loads(line) for line in text.splitlines()] if name.endswith(".jsonl") else json.loads(text)
    path = tmp_path / name
    path.write_text(json.dumps({"data": records}, indent=indent))
    with pytest.raises(DataError, match=r"holds a JSON object \(keys \['data'\]\), not records; expected a JSON "
                                        r"list of records or one JSON object per line .*under 'data'"):
        read(path)


def test_utf8_byte_order_mark_is_dropped(tmp_path):
    """Files saved by Excel start with a BOM; the first column is still called `label`."""
    path = tmp_path / "train.csv"
    path.write_bytes(b"\xef\xbb\xbf" + b"label,sentence\n1,fine\n0,dull\n")
    assert read_labelled([path])[0][0] == {"text": "fine", "label": "1"}
    assert read_json_records_lines(tmp_path) == [RECORD]


def read_json_records_lines(tmp_path):
    from adapterlab.data.reading import read_json_records

    path = tmp_path / "one.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(RECORD).encode())
    return read_json_records(path)


@pytest.mark.reliability
@pytest.mark.parametrize("field", ["instruction", "input", "output"])
@pytest.mark.parametrize("value", [None, 3, ["a"], {"text": "a"}], ids=["null", "number", "list", "object"])
def test_non_string_instruction_fields_are_refused(tmp_path, field, value):
    """instruction record with "output": null (or a number, list, object) -> error naming file, record, field"""
    path = tmp_path / "train.json"
    path.write_text(json.dumps([RECORD, {**RECORD, field: value}]))
    with pytest.raises(DataError, match=rf"train.json, record 1: field '{field}' must be a string, got "
                                        rf"{re.escape(json.dumps(value))}"):
        read_instructions([path])


# ---------------------------------------------------------------- seq-cls: labels and few-shot

def seq_cls_options(path, **options):
    from adapterlab.tasks.base import TaskOptions

    return TaskOptions(model="not-loaded", data=[str(path)], options=options)


@pytest.mark.reliability
def test_single_class_text_data_is_refused(tmp_path):
    """classification data with one label only -> error naming the file and label column (no regression head)"""
    from adapterlab.tasks import classification

    path = tmp_path / "train.tsv"
    path.write_text("label\tsentence\n1\tgood\n1\tfine\n1\tgreat\n")
    with pytest.raises(DataError, match=r"label column 'label' of .*train.tsv holds only the label '1'; a classifier "
                                        r"needs at least two classes"):
        classification.prepare(seq_cls_options(path))


def test_seq_cls_few_shot_keeps_k_rows_per_label(tmp_path):
    """--few-shot K with seq-cls trains on K rows of each label, drawn by --seed."""
    from adapterlab.tasks import classification
    from adapterlab.tasks.base import TaskOptions
    from train_helpers import encoder_folder, write_sst

    bert = encoder_folder(tmp_path / "bert")
    data = write_sst(tmp_path / "train.tsv", 40)

    def train_rows(seed):
        setup = classification.prepare(TaskOptions(model=str(bert), data=[str(data)], val_size=6, seed=seed,
                                                   options={"few_shot": 3}))
        return [(tuple(x["input_ids"]), x["labels"]) for x in setup.train_dataset], setup

    rows, setup = train_rows(0)
    assert sorted(label for _, label in rows) == [0, 0, 0, 1, 1, 1] and len(setup.eval_dataset) == 6
    assert setup.info["train_records"] == 6 and setup.info["few_shot"] == 3
    assert train_rows(0)[0] == rows and train_rows(1)[0] != rows
