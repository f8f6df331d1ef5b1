"""Bad inputs and faults of `adapterlab eval` (issue #9): changed models on resume, odd answers, bad counts,
tokenizers without pad or EOS token, failed runs and damaged predictions files. The model is the tiny scripted
Llama folder of test_eval.py, which answers 42 to every question."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from adapterlab import attach, save_adapter
from adapterlab.cli import main
from adapterlab.evaluate import evaluate, runner
from test_eval import RECORDS, model42, model_dir, tokenizer, write  # noqa: F401 (fixtures)

PREDICTIONS = "numbers.predictions.jsonl"


@pytest.fixture
def data(tmp_path):
    return write(tmp_path / "numbers.json", RECORDS)


def eval_cli(model, data, out, *extra: str) -> int:
    return main(["eval", "--model", str(model), "--datasets", str(data), "--output", str(out), "--max-new-tokens", "3",
                 "--batch-size", "2", "--no-progress", *extra])


def error_of(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())


@pytest.fixture
def own_model(tmp_path, model_dir):  # noqa: F811
    """A copy of the tiny model folder that a test may change."""
    return shutil.copytree(model_dir, tmp_path / "model")


# --- #9.5: resume refuses predictions of another model, adapter, dtype or unrecorded run --------------------------


@pytest.mark.reliability
def test_resume_after_the_model_folder_changed(own_model, data, tmp_path, capsys):
    """--resume after the model folder's weights changed -> refused, naming the model's files and --overwrite"""
    out = tmp_path / "out"
    assert eval_cli(own_model, data, out, "--limit", "2") == 0
    assert eval_cli(own_model, data, out, "--limit", "4", "--resume") == 0  # nothing changed: resumes
    assert len((out / PREDICTIONS).read_text().splitlines()) == 4
    other = T.AutoModelForCausalLM.from_pretrained(own_model)
    with torch.no_grad():
        other.lm_head.weight.mul_(2)
    other.save_pretrained(own_model)
    capsys.readouterr()
    assert eval_cli(own_model, data, out, "--resume") == 2
    err = error_of(capsys)
    assert "model's files" in err and "--overwrite" in err and "another --output" in err
    assert len((out / PREDICTIONS).read_text().splitlines()) == 4  # untouched


@pytest.mark.reliability
def test_resume_after_the_adapter_changed(own_model, data, tmp_path, capsys):
    """--resume after another adapter was saved to the same --adapter-path -> refused, naming the adapter's weights"""
    out, run = tmp_path / "out", tmp_path / "run"
    for seed in (0, 1):
        model = T.AutoModelForCausalLM.from_pretrained(own_model)
        attach(model, "lora", r=2)
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora" in name.lower():
                    parameter.normal_(std=1e-6)
        save_adapter(model, run)
        if seed == 0:
            assert eval_cli(own_model, data, out, "--adapter-path", str(run), "--limit", "2") == 0
    capsys.readouterr()
    assert eval_cli(own_model, data, out, "--adapter-path", str(run), "--resume") == 2
    assert "adapter's weights" in error_of(capsys)


@pytest.mark.reliability
def test_resume_with_another_dtype(own_model, data, tmp_path, capsys):
    """--resume with another --dtype than the interrupted run -> refused, naming dtype was float32, now bfloat16"""
    out = tmp_path / "out"
    assert eval_cli(own_model, data, out, "--limit", "2", "--dtype", "float32") == 0
    capsys.readouterr()
    assert eval_cli(own_model, data, out, "--resume", "--dtype", "bfloat16") == 2
    assert "dtype was 'float32', now 'bfloat16'" in error_of(capsys)


@pytest.mark.reliability
def test_resume_without_eval_config(own_model, data, tmp_path, capsys):
    """--resume into predictions whose eval_config.json is missing -> refused: nothing says which model made them"""
    out = tmp_path / "out"
    assert eval_cli(own_model, data, out, "--limit", "2") == 0
    (out / "eval_config.json").unlink()
    capsys.readouterr()
    assert eval_cli(own_model, data, out, "--resume") == 2
    err = error_of(capsys)
    assert "eval_config.json is missing" in err and "--overwrite" in err
    assert eval_cli(own_model, data, out, "--overwrite") == 0


# --- #9.7: a math file with an odd answer -------------------------------------------------------------------------


@pytest.mark.reliability
def test_math_file_with_one_word_answer(model_dir, tmp_path, capsys):  # noqa: F811
    """a numbers file given by path with one answer 'seven' -> refused naming the record; no 0% label set"""
    records = [*RECORDS, {"instruction": "How many days in a week?", "answer": "seven"}]
    data = write(tmp_path / "numbers.json", records)
    assert eval_cli(model_dir, data, tmp_path / "out") == 2
    err = error_of(capsys)
    assert "numbers.json: record 6 has answer 'seven'" in err and "--answer-type label" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.reliability
def test_inferred_answer_type_is_printed(model_dir, data, tmp_path, capsys):  # noqa: F811
    """a data file given by path -> one line says the inferred answer type and that --answer-type overrides it"""
    assert eval_cli(model_dir, data, tmp_path / "out") == 0
    assert f"{data}: answer type number (inferred; --answer-type overrides)" in capsys.readouterr().out


# --- #9.9 and #9.16: counts are checked before anything is written --------------------------------------------------


@pytest.mark.reliability
@pytest.mark.parametrize("flag, value", [("--limit", "-1"), ("--batch-size", "0"), ("--max-new-tokens", "0"),
                                         ("--num-beams", "0")])
def test_bad_counts_are_refused_before_writing(model_dir, data, tmp_path, capsys, flag, value):  # noqa: F811
    """eval --limit -1 (or --batch-size, --max-new-tokens, --num-beams 0) -> refused naming the flag; nothing written"""
    assert eval_cli(model_dir, data, tmp_path / "out", flag, value) == 2
    assert f"{flag} must be a whole number of at least" in error_of(capsys)
    assert not (tmp_path / "out").exists()
    assert eval_cli(model_dir, data, tmp_path / "out") == 0  # the corrected command runs


@pytest.mark.reliability
def test_evaluate_refuses_a_negative_limit(model42, tokenizer):  # noqa: F811
    """evaluate(limit=-1) -> ValueError naming limit, instead of dropping the last record"""
    with pytest.raises(ValueError, match="limit must be a whole number of at least 0"):
        evaluate(model42, tokenizer, RECORDS, limit=-1, progress=False)


# --- #9.15: a tokenizer with neither pad nor EOS token ----------------------------------------------------------------


def bare_byte_tokenizer() -> T.PreTrainedTokenizerFast:
    """The byte-level tokenizer of test_eval without any special token: no pad, no EOS, no unk."""
    vocab = {"<|endoftext|>": 0, "<pad>": 1}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return T.PreTrainedTokenizerFast(tokenizer_object=backend)


@pytest.mark.reliability
def test_tokenizer_without_pad_or_eos(own_model, data, tmp_path, capsys):
    """a model folder whose tokenizer has neither pad nor EOS token -> evaluated as usual, padding with id 0"""
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (own_model / name).unlink(missing_ok=True)
    bare_byte_tokenizer().save_pretrained(own_model)
    assert eval_cli(own_model, data, tmp_path / "out", "--max-new-tokens", "5") == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["datasets"]["numbers"]["correct"] == 4


@pytest.mark.reliability
def test_evaluate_leaves_a_tokenizer_without_pad_token_unchanged(model42):  # noqa: F811
    """evaluate() with a tokenizer that has no pad or EOS token -> runs batched; the caller's tokenizer is unchanged"""
    bare = bare_byte_tokenizer()
    summary = evaluate(model42, bare, RECORDS, batch_size=3, max_new_tokens=5, stop_strings=("Q:",), progress=False)
    assert summary["datasets"]["records"]["correct"] == 4 and bare.pad_token is None


# --- #9.16: a failed run does not block the rerun ---------------------------------------------------------------------


@pytest.mark.reliability
def test_generation_failure_leaves_no_predictions_file(model_dir, data, tmp_path, monkeypatch, capsys):  # noqa: F811
    """a tokenizer or model failure before the first batch -> no predictions file; the same command then runs"""
    def failing(*args, **kwargs):
        raise RuntimeError("tokenizer failed")
        yield

    monkeypatch.setattr(runner, "generate_batches", failing)
    with pytest.raises(RuntimeError):
        eval_cli(model_dir, data, tmp_path / "out")
    assert not (tmp_path / "out" / PREDICTIONS).exists()
    monkeypatch.undo()
    assert eval_cli(model_dir, data, tmp_path / "out") == 0


@pytest.mark.reliability
@pytest.mark.parametrize("left", ["", '{"id": 0, "datas'], ids=["empty", "torn-first-line"])
def test_empty_predictions_file_does_not_block(model_dir, data, tmp_path, left):  # noqa: F811
    """an empty (or one torn line) predictions file left by a failed run -> the same command runs, no --resume"""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / PREDICTIONS).write_text(left)
    assert eval_cli(model_dir, data, tmp_path / "out") == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / PREDICTIONS).read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(6))


# --- #9.11: damaged predictions files on resume -----------------------------------------------------------------------


@pytest.mark.reliability
def test_resume_with_a_corrupt_middle_line(model_dir, data, tmp_path, capsys):  # noqa: F811
    """--resume with a garbled line inside the predictions file -> one-line error naming the file, line and the fix"""
    out = tmp_path / "out"
    assert eval_cli(model_dir, data, out, "--limit", "3") == 0
    lines = (out / PREDICTIONS).read_text().splitlines()
    (out / PREDICTIONS).write_text("\n".join([lines[0], "garbage{", *lines[1:]]) + "\n")
    capsys.readouterr()
    assert eval_cli(model_dir, data, out, "--resume") == 2
    err = error_of(capsys)
    assert f"{out / PREDICTIONS}: line 2 is not a predictions row" in err and "--overwrite" in err


@pytest.mark.reliability
@pytest.mark.parametrize("tail", ['{"id": 3, "datas', None], ids=["torn", "no-newline"])
def test_resume_after_a_kill_during_write(model_dir, data, tmp_path, capsys, monkeypatch, tail):  # noqa: F811
    """--resume after a kill while a row was written (torn last line, or a row without its newline) -> resumes"""
    out = tmp_path / "out"
    assert eval_cli(model_dir, data, out, "--limit", "3") == 0
    text = (out / PREDICTIONS).read_text()
    (out / PREDICTIONS).write_text(text + tail if tail else text.rstrip("\n"))
    real = runner.generate_batches

    def killed_after_one_batch(*args, **kwargs):
        yield next(real(*args, **kwargs))
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "generate_batches", killed_after_one_batch)
    capsys.readouterr()
    assert eval_cli(model_dir, data, out, "--resume") == 130
    assert ("dropped line 4, cut short by an interrupted run" in capsys.readouterr().out) == bool(tail)
    assert [json.loads(line)["id"] for line in (out / PREDICTIONS).read_text().splitlines()] == [0, 1, 2, 3, 4]
    monkeypatch.undo()
    assert eval_cli(model_dir, data, out, "--resume") == 0
    rows = [json.loads(line) for line in (out / PREDICTIONS).read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(6))


@pytest.mark.reliability
def test_eval_reads_jsonl_and_names_bad_bytes(tmp_path):
    """an eval file as JSONL, or with non-UTF-8 bytes -> read like training data / one error naming file and offset"""
    from adapterlab.errors import DataError
    from adapterlab.evaluate.datasets import read_records

    lines = tmp_path / "set.jsonl"
    lines.write_text('{"instruction": "1+1?", "answer": "2"}\n{"instruction": "2+2?", "answer": "4"}\n')
    assert [r["answer"] for r in read_records(lines)] == ["2", "4"]
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'[{"instruction": "caf\xe9?", "answer": "1"}]')
    with pytest.raises(DataError, match=r"bad.json is not UTF-8 text: byte 0xe9 at offset 21"):
        read_records(bad)


@pytest.mark.reliability
def test_datasets_folder_says_it_is_a_folder(model_dir, tmp_path, capsys):  # noqa: F811
    """eval --datasets FOLDER -> one line saying it is a folder and to pass the file inside it (as train does), exit 2"""
    folder = tmp_path / "math"
    folder.mkdir()
    assert eval_cli(model_dir, folder, tmp_path / "out") == 2
    err = error_of(capsys)
    assert f"{folder} is a folder, not a file" in err and "pass the file inside it" in err and "No data file" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.reliability
def test_output_that_is_a_file_is_refused(model_dir, data, tmp_path, capsys):  # noqa: F811
    """eval --output FILE -> one line saying --output must be a folder, exit 2, the file untouched"""
    out = tmp_path / "results.txt"
    out.write_text("keep")
    assert eval_cli(model_dir, data, out) == 2
    err = error_of(capsys)
    assert f"--output {out} is a file; --output must be a folder" in err and "File exists" not in err
    assert out.read_text() == "keep"


@pytest.mark.reliability
def test_evaluate_output_dir_that_is_a_file_is_refused(model42, tokenizer, tmp_path):  # noqa: F811
    """evaluate(output_dir=FILE) in Python -> RunFolderError (a FileExistsError) naming output_dir, not mkdir's error"""
    from adapterlab.errors import RunFolderError

    out = tmp_path / "file"
    out.write_text("keep")
    with pytest.raises(RunFolderError, match="output_dir .* is a file; output_dir must be a folder"):
        evaluate(model42, tokenizer, RECORDS[:2], output_dir=out, progress=False)
    assert out.read_text() == "keep"


# --- #19: one output-folder rule for eval (nothing an earlier evaluation wrote is lost) ----------------------------


@pytest.mark.reliability
def test_eval_of_another_data_set_into_an_earlier_evaluation(model_dir, data, tmp_path, capsys):  # noqa: F811
    """eval of data set B into a folder holding an evaluation of A -> refused (A's summary would be replaced);
    --resume adds B and keeps A in summary.json; --overwrite removes A's outputs and only them"""
    other = write(tmp_path / "others.json", RECORDS[:2])
    out = tmp_path / "out"
    assert eval_cli(model_dir, data, out) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert eval_cli(model_dir, other, out) == 2
    err = error_of(capsys)
    assert "earlier evaluation of numbers" in err and "--resume" in err and "--overwrite" in err
    assert set(json.loads((out / "summary.json").read_text())["datasets"]) == {"numbers"}
    assert eval_cli(model_dir, other, out, "--resume") == 0
    assert set(json.loads((out / "summary.json").read_text())["datasets"]) == {"numbers", "others"}
    assert (out / PREDICTIONS).is_file()
    assert eval_cli(model_dir, other, out, "--overwrite") == 0
    assert set(json.loads((out / "summary.json").read_text())["datasets"]) == {"others"}
    assert not (out / PREDICTIONS).exists() and (out / "notes.txt").read_text() == "mine"


@pytest.mark.reliability
@pytest.mark.parametrize("where", ["model", "inside-model", "run"])
def test_eval_output_in_the_model_or_a_run_folder_is_refused(own_model, data, tmp_path, capsys, where):
    """eval --output that is or lies inside the model's folder, or is a training run's folder -> one line naming
    it, nothing written there"""
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.yaml").write_text("model: x\n")
    out = {"model": own_model, "inside-model": own_model / "evals", "run": run}[where]
    before = sorted(p.name for p in out.parent.rglob("*"))
    assert eval_cli(own_model, data, out) == 2
    err = error_of(capsys)
    assert "--output" in err and ("model's folder" in err or "training run folder" in err)
    assert sorted(p.name for p in out.parent.rglob("*")) == before
