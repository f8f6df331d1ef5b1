"""`adapterlab eval --adapter-path RUN` for classification runs: scores equal to the model's own logits, streamed and
resumable predictions, confusion-matrix PNG, audio and image runs, and the one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as T
from PIL import Image

from adapterlab.cli import main
from adapterlab.evaluate import class_runner
from adapterlab.evaluate.class_metrics import classification_scores, confusion_matrix, macro_f1
from adapterlab.evaluate.report import wilson_interval
from adapterlab.train import TrainConfig, load_run, train
from train_helpers import encoder_folder, write_sst

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return encoder_folder(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def sst_run(bert, tmp_path_factory) -> Path:
    """A seq-cls LoRA run trained for two steps on a tiny SST-2-like file."""
    folder = tmp_path_factory.mktemp("sst")
    train(TrainConfig(model=str(bert), data=[str(write_sst(folder / "train.tsv", 16))], task="seq-cls",
                      output=str(folder / "run"), adapter="lora", adapter_options={"r": 4}, max_steps=2,
                      batch_size=4, micro_batch_size=4, warmup_steps=0, lr=5e-2))
    return folder / "run"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def one_line_error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines()
             if line.strip() and not line.startswith("Loading weights")]  # transformers' own loading bar
    assert len(lines) == 1 and lines[0].startswith("adapterlab eval: error: "), lines
    return lines[0]


def library_predictions(bert: Path, run: Path, test: Path) -> list[str]:
    """The run's predictions computed by hand: the run loaded with the library, argmax of its logits."""
    model = load_run(T.AutoModelForSequenceClassification.from_pretrained(bert, num_labels=2), run).eval()
    tokenizer = T.AutoTokenizer.from_pretrained(run)
    lines = test.read_text().splitlines()[1:]
    texts = [line.split("\t", 1)[1] for line in lines]
    with torch.no_grad():
        logits = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits
    labels = json.loads((run / "labels.json").read_text())["labels"]
    return [labels[i] for i in logits.argmax(-1).tolist()]


def test_seq_cls_scores_match_the_models_own_logits(bert, sst_run, tmp_path, capsys):
    test = write_sst(tmp_path / "test.tsv", 10, seed=3)
    assert main(["eval", "--adapter-path", str(sst_run), "--datasets", str(test), "--batch-size", "3",
                 "--output", str(tmp_path / "eval"), "--no-progress"]) == 0
    assert "| test | 10 |" in capsys.readouterr().out
    expected = library_predictions(bert, sst_run, test)
    gold = [line.split("\t")[0] for line in test.read_text().splitlines()[1:]]
    written = rows(tmp_path / "eval" / "test.predictions.jsonl")
    assert [r["index"] for r in written] == list(range(10))
    assert [r["predicted"] for r in written] == expected and [r["gold"] for r in written] == gold
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in written)
    scores = json.loads((tmp_path / "eval" / "summary.json").read_text())["datasets"]["test"]
    correct = sum(p == g for p, g in zip(expected, gold))
    assert scores["correct"] == correct and scores["accuracy"] == pytest.approx(correct / 10)
    assert scores["ci95"] == pytest.approx(list(wilson_interval(correct, 10)))
    f1s = []
    for label in ("0", "1"):
        tp = sum(p == g == label for p, g in zip(expected, gold))
        precision = tp / max(expected.count(label), 1)
        recall = tp / max(gold.count(label), 1)
        f1s.append(2 * precision * recall / (precision + recall) if tp else 0.0)
        assert scores["per_class"][label]["f1"] == pytest.approx(f1s[-1])
    assert scores["macro_f1"] == pytest.approx(sum(f1s) / 2)
    png = tmp_path / "eval" / "test.confusion.png"
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(png) as image:
        image.verify()
    assert "macro-F1" in (tmp_path / "eval" / "summary.md").read_text()


def test_limit_and_an_interrupted_run_resumes_where_it_stopped(sst_run, tmp_path, monkeypatch, capsys):
    """eval killed after two batches -> the rows made so far are on disk, and --resume predicts only the rest"""
    test = write_sst(tmp_path / "test.tsv", 12, seed=4)
    out = tmp_path / "eval"
    argv = ["eval", "--adapter-path", str(sst_run), "--datasets", str(test), "--batch-size", "2", "--limit", "9",
            "--output", str(out), "--no-progress"]
    whole = tmp_path / "whole"
    assert main([*argv[:-3], "--output", str(whole), "--no-progress"]) == 0
    real = class_runner.predict_batches

    def interrupted(*args, **kwargs):
        for number, batch in enumerate(real(*args, **kwargs)):
            if number == 2:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(class_runner, "predict_batches", interrupted)
    assert main(argv) == 130
    assert [r["index"] for r in rows(out / "test.predictions.jsonl")] == [0, 1, 2, 3]
    monkeypatch.setattr(class_runner, "predict_batches", real)
    capsys.readouterr()
    assert main(argv) == 2 and "--resume" in one_line_error(capsys)
    assert main([*argv, "--resume"]) == 0
    assert rows(out / "test.predictions.jsonl") == rows(whole / "test.predictions.jsonl")
    assert len(rows(whole / "test.predictions.jsonl")) == 9
    summary = json.loads((out / "summary.json").read_text())["datasets"]["test"]
    assert summary["n"] == 9 and summary["predicted_now"] == 5


def test_macro_f1_and_per_class_scores_on_a_fixed_confusion_matrix():
    # gold rows, predicted columns; class "d" never occurs and is left out of the macro mean
    gold = [0, 0, 0, 0, 1, 1, 1, 1]
    predicted = [0, 0, 0, 1, 0, 1, 1, 2]
    counts = confusion_matrix(gold, predicted, 4)
    assert counts.tolist() == [[3, 1, 0, 0], [1, 2, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    # a: P = R = 3/4; b: P = 2/3, R = 2/4, F1 = 4/7; c: predicted once, never right -> 0
    assert macro_f1(counts) == pytest.approx((0.75 + 4 / 7 + 0) / 3)
    scores = classification_scores(gold, predicted, ["a", "b", "c", "d"])
    assert scores["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 0.5, "f1": 4 / 7, "support": 4})
    assert scores["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert scores["accuracy"] == 5 / 8


def test_wilson_interval_known_values():
    assert wilson_interval(8, 10) == pytest.approx((0.490, 0.943), abs=5e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.278), abs=5e-4)
    assert classification_scores([0] * 10, [0] * 8 + [1] * 2, ["x", "y"])["ci95"] == \
        pytest.approx([0.490, 0.943], abs=5e-4)


@pytest.mark.reliability
def test_unknown_labels_in_the_test_file_are_one_line(sst_run, tmp_path, capsys):
    """test file with labels the run never saw -> one line naming those labels, exit 2, nothing written"""
    test = tmp_path / "test.tsv"
    test.write_text("label\tsentence\n1\tthe film is good\n7\tthe film is odd\nneutral\tmeh\n")
    code = main(["eval", "--adapter-path", str(sst_run), "--datasets", str(test), "--output", str(tmp_path / "eval"),
                 "--no-progress"])
    line = one_line_error(capsys)
    assert code == 2 and "['7', 'neutral']" in line and str(test) in line
    assert not (tmp_path / "eval").exists()


@pytest.mark.reliability
def test_generation_flags_are_refused_for_a_classification_run(sst_run, tmp_path, capsys):
    """--max-new-tokens / --num-beams on a classification run -> one line naming both flags, exit 2"""
    test = write_sst(tmp_path / "test.tsv", 4)
    code = main(["eval", "--adapter-path", str(sst_run), "--datasets", str(test), "--max-new-tokens", "5",
                 "--num-beams", "2", "--no-progress"])
    line = one_line_error(capsys)
    assert code == 2 and "--max-new-tokens, --num-beams only apply to generative evaluation" in line


# --- audio and image runs ---------------------------------------------------------------------------------------


def test_audio_few_shot_run_evaluates_on_a_folder(tmp_path):
    from test_audio import TINY_AST, write_tone

    from adapterlab.tasks.scratch import build_classifier

    root = tmp_path / "recordings"
    root.mkdir()
    for digit in range(3):
        for index in range(4):
            write_tone(root / f"{digit}_ann_{index}.wav", 300 + 400 * digit + 10 * index)
    (tmp_path / "ast.json").write_text(json.dumps(TINY_AST))
    spec, run = f"config:{tmp_path / 'ast.json'}", tmp_path / "run"
    assert main(["train", "--task", "audio-cls", "--model", spec, "--data", str(root), "--few-shot", "2",
                 "--max-length", "48", "--adapter", "lora", "--r", "4", "--max-steps", "2", "--batch-size", "6",
                 "--micro-batch-size", "6", "--warmup-steps", "0", "--lr", "1e-2", "--output", str(run)]) == 0
    assert main(["eval", "--adapter-path", str(run), "--datasets", str(root), "--batch-size", "5",
                 "--output", str(tmp_path / "eval"), "--no-progress"]) == 0
    written = rows(tmp_path / "eval" / "recordings.predictions.jsonl")
    assert len(written) == 12 and written[0]["input"].endswith("0_ann_0.wav") and written[0]["gold"] == "0"
    # by hand: the base rebuilt from the run's seed, the run loaded onto it, argmax of its logits
    from adapterlab.tasks import audio
    from adapterlab.tasks.base import TaskOptions

    model, extractor = build_classifier(spec, "audio-cls", ["0", "1", "2"], seed=42, max_length=48)
    load_run(model.eval(), run)
    options = TaskOptions(model=spec, data=[str(root)])
    files, names = audio.read_examples([str(root)], options)
    dataset = audio.make_dataset(files, [int(n) for n in names], extractor, options)[0]
    with torch.no_grad():
        logits = model(input_values=torch.stack([torch.from_numpy(dataset[i]["input_values"])
                                                 for i in range(12)])).logits
    assert [r["predicted"] for r in written] == [str(i) for i in logits.argmax(-1).tolist()]
    assert (tmp_path / "eval" / "recordings.confusion.png").read_bytes().startswith(PNG_SIGNATURE)


def test_image_run_evaluates_on_a_class_folder(tmp_path):
    from test_image import image_folder, write_config

    spec, run = f"config:{write_config(tmp_path)}", tmp_path / "run"
    train_root = image_folder(tmp_path / "train", ["cat", "dog"], 4)
    test_root = image_folder(tmp_path / "test", ["cat", "dog"], 3, seed=1)
    assert main(["train", "--task", "image-cls", "--model", spec, "--data", str(train_root), "--adapter", "lora",
                 "--r", "4", "--max-steps", "2", "--batch-size", "4", "--micro-batch-size", "4", "--warmup-steps",
                 "0", "--output", str(run)]) == 0
    assert main(["eval", "--adapter-path", str(run), "--datasets", str(test_root), "--output",
                 str(tmp_path / "eval"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())["datasets"]["test"]
    written = rows(tmp_path / "eval" / "test.predictions.jsonl")
    assert summary["n"] == 6 and summary["labels"] == ["cat", "dog"]
    assert summary["correct"] == sum(r["correct"] for r in written)
    assert sum(map(sum, summary["confusion"])) == 6
