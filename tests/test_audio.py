"""Audio classification: WAV reading and resampling, labels, FSDD split, few-shot, position-embedding resizing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from tiny_models import tiny_model
from transformers import default_data_collator

import adapterlab
from adapterlab.data.audio import fsdd_test_files, labels_from_csv, labels_from_names, list_audio, read_audio
from adapterlab.data.sampling import few_shot
from adapterlab.models.posembed import resize_ast_positions, resize_patch_grid
from adapterlab.tasks import audio
from adapterlab.tasks.base import TaskOptions

TINY_AST = dict(model_type="audio-spectrogram-transformer", hidden_size=32, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=64, num_mel_bins=16, max_length=32)


def write_tone(path: Path, freq: float, rate: int = 8000, seconds: float = 0.25) -> None:
    t = np.arange(int(rate * seconds)) / rate
    soundfile.write(str(path), (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, subtype="PCM_16")


@pytest.fixture
def fsdd_like(tmp_path: Path) -> Path:
    """3 digits x 2 speakers x 7 takes of tones, named like FSDD: {digit}_{speaker}_{index}.wav at 8 kHz."""
    root = tmp_path / "recordings"
    root.mkdir()
    for digit in range(3):
        for speaker in ("ann", "bob"):
            for index in range(7):
                write_tone(root / f"{digit}_{speaker}_{index}.wav", 300 + 400 * digit + 10 * index)
    return root


@pytest.fixture
def tiny_ast_config(tmp_path: Path) -> str:
    path = tmp_path / "ast.json"
    path.write_text(json.dumps(TINY_AST))
    return f"config:{path}"


def test_read_audio_resamples_and_keeps_pitch(tmp_path: Path) -> None:
    write_tone(tmp_path / "a.wav", 440.0, rate=8000, seconds=1.0)
    wave = read_audio(tmp_path / "a.wav", 16000)
    assert wave.dtype == np.float32 and wave.shape == (16000,)
    peak_hz = np.argmax(np.abs(np.fft.rfft(wave))) * 16000 / len(wave)
    assert abs(peak_hz - 440.0) <= 1.0


def test_labels_from_names_csv_and_fsdd_split(fsdd_like: Path, tmp_path: Path) -> None:
    files = list_audio(fsdd_like)
    assert labels_from_names(files)[:7] == ["0"] * 7
    table = tmp_path / "labels.csv"
    table.write_text("file,label\n" + "".join(f"{p.name},{'low' if p.name[0] == '0' else 'high'}\n" for p in files))
    assert set(labels_from_csv(files, fsdd_like, table)) == {"low", "high"}
    marks = fsdd_test_files(files)
    assert sum(marks) == 3 * 2 * 5 and all((int(p.stem.split("_")[2]) < 5) == m for p, m in zip(files, marks))
    with pytest.raises(ValueError, match="label-pattern"):
        labels_from_names(files, r"^x(\d)")


def test_few_shot_is_deterministic_and_balanced() -> None:
    labels = [i % 4 for i in range(40)]
    picks = few_shot(labels, 3, seed=7)
    assert picks == few_shot(labels, 3, seed=7)
    assert picks != few_shot(labels, 3, seed=8)
    assert sorted(labels[i] for i in picks) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    with pytest.raises(ValueError, match="few-shot"):
        few_shot(labels, 11, seed=0)


def test_position_grid_unchanged_size_is_identity_and_keeps_special_tokens() -> None:
    table = torch.randn(1, 2 + 5 * 9, 8)
    assert torch.equal(resize_patch_grid(table, (5, 9), (5, 9), leading_tokens=2), table)
    wider = resize_patch_grid(table, (5, 9), (5, 20), leading_tokens=2)
    assert wider.shape == (1, 2 + 5 * 20, 8) and torch.equal(wider[:, :2], table[:, :2])
    flat = torch.ones(1, 1 + 3 * 4, 2)  # a constant grid stays constant under interpolation
    assert torch.allclose(resize_patch_grid(flat, (3, 4), (6, 7), leading_tokens=1), torch.ones(1, 1 + 42, 2))


def test_resized_ast_runs_at_the_new_length() -> None:
    model = tiny_model("ast")
    special = model.base_model.embeddings.position_embeddings[:, :2].clone()
    resize_ast_positions(model, 96)  # 16 mel bins x 96 frames: 1 x 9 patches instead of 1 x 2
    table = model.base_model.embeddings.position_embeddings
    assert table.shape == (1, 2 + 9, 32) and torch.equal(table[:, :2], special)
    assert model.config.max_length == 96
    assert model(input_values=torch.randn(2, 96, 16)).logits.shape == (2, 3)


def test_prepare_fsdd_split_few_shot_and_forward(fsdd_like: Path, tiny_ast_config: str) -> None:
    options = TaskOptions(model=tiny_ast_config, data=[str(fsdd_like)], seed=3,
                          options={"split": "fsdd", "few_shot": 2, "max_length": 48})
    setup = audio.prepare(options)
    assert setup.info["labels"] == ["0", "1", "2"]
    assert len(setup.train_dataset) == 3 * 2 and len(setup.eval_dataset) == 3 * 2 * 5
    assert all(int(p.stem.split("_")[2]) >= 5 for p in setup.train_dataset.files)
    assert setup.model.config.max_length == 48 and setup.processor.max_length == 48
    assert setup.model.config.id2label[2] == "2" and setup.trainable_modules == ["classifier"]
    batch = default_data_collator([setup.train_dataset[i] for i in range(4)])
    assert batch["input_values"].shape == (4, 48, 16) and batch["labels"].dtype == torch.long
    assert torch.isfinite(setup.model(**batch).loss)
    again = audio.prepare(options)
    assert again.train_dataset.files == setup.train_dataset.files


def test_prepare_random_split_is_stratified(fsdd_like: Path, tiny_ast_config: str) -> None:
    setup = audio.prepare(TaskOptions(model=tiny_ast_config, data=[str(fsdd_like)], val_size=0.25, seed=0))
    dev_labels = setup.eval_dataset.labels
    assert len(setup.train_dataset) + len(dev_labels) == 42
    assert sorted(set(dev_labels)) == [0, 1, 2] and dev_labels.count(0) == dev_labels.count(2)


def test_adapter_on_prepared_ast_trains_only_adapter_and_head(fsdd_like: Path, tiny_ast_config: str) -> None:
    setup = audio.prepare(TaskOptions(model=tiny_ast_config, data=[str(fsdd_like)], options={"split": "fsdd"}))
    model = adapterlab.attach(setup.model, "lora", r=4)
    for name in setup.trainable_modules:
        model.get_submodule(name).requires_grad_(True)
    batch = default_data_collator([setup.train_dataset[i] for i in range(4)])
    model(**batch).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all("adapterlab" in n or n.startswith("classifier.") for n in with_grad)
    assert any(n.startswith("classifier.") for n in with_grad)


def test_bad_options_name_the_fix(fsdd_like: Path, tiny_ast_config: str) -> None:
    with pytest.raises(ValueError, match="--split"):
        audio.prepare(TaskOptions(model=tiny_ast_config, data=[str(fsdd_like)], options={"split": "speaker"}))
    with pytest.raises(ValueError, match="--val-size"):
        audio.prepare(TaskOptions(model=tiny_ast_config, data=[str(fsdd_like)], val_size=0.1,
                                  options={"split": "fsdd"}))
    with pytest.raises(ValueError, match="preset"):
        audio.prepare(TaskOptions(model="config:nope", data=[str(fsdd_like)]))
    with pytest.raises(ValueError, match="model_type"):
        audio.prepare(TaskOptions(model="config:vit-small", data=[str(fsdd_like)]))


def test_fresh_ast_has_random_special_tokens(tiny_ast_config: str) -> None:
    """Zero CLS tokens hit the first LayerNorm with zero variance; a config-built AST must not start that way."""
    from adapterlab.tasks.scratch import build_classifier

    model, _ = build_classifier(tiny_ast_config, "audio-cls", ["a", "b"], seed=0)
    embeddings = model.base_model.embeddings
    assert embeddings.cls_token.std() > 0 and embeddings.distillation_token.std() > 0
    model(input_values=torch.randn(4, 32, 16), labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    assert float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)) < 100


def test_checkpoint_at_another_length_gets_interpolated_positions(fsdd_like: Path, tmp_path: Path) -> None:
    from transformers import ASTFeatureExtractor

    checkpoint = tmp_path / "ast-checkpoint"
    saved = tiny_model("ast")  # 16 mel bins x 32 frames: a 1 x 2 patch grid
    saved.save_pretrained(checkpoint)
    ASTFeatureExtractor(num_mel_bins=16, max_length=32).save_pretrained(checkpoint)
    table = saved.base_model.embeddings.position_embeddings.detach()

    same = audio.prepare(TaskOptions(model=str(checkpoint), data=[str(fsdd_like)], options={"split": "fsdd"}))
    assert torch.equal(same.model.base_model.embeddings.position_embeddings, table)
    assert same.info["pretrained"] and same.model.config.id2label == {0: "0", 1: "1", 2: "2"}

    longer = audio.prepare(TaskOptions(model=str(checkpoint), data=[str(fsdd_like)],
                                       options={"split": "fsdd", "max_length": 96}))
    resized = longer.model.base_model.embeddings.position_embeddings
    assert resized.shape == (1, 2 + 9, 32) and torch.equal(resized[:, :2], table[:, :2])
    assert torch.equal(resized[:, 2:], resize_patch_grid(table, (1, 2), (1, 9), leading_tokens=2)[:, 2:])
    batch = default_data_collator([longer.train_dataset[i] for i in range(2)])
    assert batch["input_values"].shape == (2, 96, 16) and torch.isfinite(longer.model(**batch).loss)


def test_train_cli_run_restores_the_trained_classifier(fsdd_like: Path, tiny_ast_config: str, tmp_path: Path) -> None:
    """`adapterlab train --task audio-cls` with the task flags; the run folder (adapter + head) reproduces
    the best dev accuracy on a freshly built base model."""
    from transformers import AutoFeatureExtractor

    from adapterlab.cli import main
    from adapterlab.tasks.scratch import build_classifier
    from adapterlab.train import load_run

    run = tmp_path / "run"
    assert main(["train", "--task", "audio-cls", "--model", tiny_ast_config, "--data", str(fsdd_like),
                 "--split", "fsdd", "--max-length", "48", "--few-shot", "4", "--adapter", "lora", "--r", "4",
                 "--max-steps", "4", "--batch-size", "4", "--micro-batch-size", "4", "--eval-steps", "2",
                 "--warmup-steps", "0", "--lr", "1e-2", "--output", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["split"] == "fsdd" and summary["data"]["train_records"] == 3 * 4
    assert AutoFeatureExtractor.from_pretrained(run).max_length == 48

    model, _ = build_classifier(tiny_ast_config, "audio-cls", summary["data"]["labels"], seed=42, max_length=48)
    dev = audio.prepare(TaskOptions(model=tiny_ast_config, data=[str(fsdd_like)], options={"split": "fsdd"}))
    dev.eval_dataset.feature_extractor.max_length = 48
    batch = default_data_collator([dev.eval_dataset[i] for i in range(len(dev.eval_dataset))])
    with torch.no_grad():
        untrained = model.eval()(input_values=batch["input_values"]).logits
        load_run(model, run)
        logits = model(input_values=batch["input_values"]).logits
    assert not torch.allclose(logits, untrained)
    accuracy = (logits.argmax(-1) == batch["labels"]).float().mean().item()
    assert accuracy == pytest.approx(summary["best_metric"]["value"])


def test_max_train_samples_is_honoured(fsdd_like: Path, tiny_ast_config: str) -> None:
    """--max-train-samples 10 trains on 10 of the 42 recordings (a seeded subset), not on all of them."""
    def train_files(seed: int, **extra) -> list[Path]:
        options = TaskOptions(model=tiny_ast_config, data=[str(fsdd_like)], seed=seed,
                              options={"max_train_samples": 10, **extra})
        return audio.prepare(options).train_dataset.files

    files = train_files(0)
    assert len(files) == 10 and files == train_files(0) and files != train_files(1)
    held = audio.prepare(TaskOptions(model=tiny_ast_config, data=[str(fsdd_like)], val_size=3, seed=0,
                                     options={"max_train_samples": 10}))
    assert len(held.train_dataset) + len(held.eval_dataset) == 10  # the dev set is held out of the 10


@pytest.mark.reliability
@pytest.mark.parametrize("labelling", ["pattern", "csv"])
def test_single_label_audio_is_refused(tmp_path: Path, tiny_ast_config: str, labelling: str) -> None:
    """audio folder whose files all get one label -> error naming where the labels come from (no regression head)"""
    root = tmp_path / "one"
    root.mkdir()
    for index in range(4):
        write_tone(root / f"7_ann_{index}.wav", 440.0)
    options = {}
    if labelling == "csv":
        (tmp_path / "labels.csv").write_text("file,label\n" + "".join(f"7_ann_{i}.wav,seven\n" for i in range(4)))
        options = {"labels_csv": str(tmp_path / "labels.csv")}
    source = r"'label' column of .*labels.csv holds only the label 'seven'" if options else \
        r"--label-pattern '\^\(\[\^_\]\+\)_' reads from the file names in .*one holds only the label '7'"
    with pytest.raises(ValueError, match=source + "; a classifier needs at least two classes"):
        audio.prepare(TaskOptions(model=tiny_ast_config, data=[str(root)], options=options))


def write_bad_clip(path: Path, fault: str) -> None:
    """A clip that cannot be scored: float samples with a NaN and an inf, or no samples at all."""
    if fault == "nan":
        samples = (0.5 * np.sin(np.arange(2000) / 3)).astype(np.float32)
        samples[[100, 900]] = [np.nan, np.inf]
        soundfile.write(str(path), samples, 8000, subtype="FLOAT")
    else:
        soundfile.write(str(path), np.zeros(0, dtype=np.float32), 8000, subtype="PCM_16")


@pytest.mark.reliability
@pytest.mark.parametrize("fault, message", [("nan", "holds 2 NaN or infinite sample"), ("empty", "holds no samples")])
def test_unusable_clip_is_refused_in_train_and_eval(fsdd_like: Path, tiny_ast_config: str, tmp_path: Path, capsys,
                                                    fault: str, message: str) -> None:
    """audio clip with NaN/inf samples, or with none -> train and eval refuse it naming the file, nothing written"""
    from adapterlab.cli import main

    run = tmp_path / "run"
    assert main(["train", "--task", "audio-cls", "--model", tiny_ast_config, "--data", str(fsdd_like),
                 "--split", "fsdd", "--adapter", "lora", "--r", "2", "--max-steps", "1", "--batch-size", "2",
                 "--micro-batch-size", "2", "--warmup-steps", "0", "--output", str(run)]) == 0
    bad = fsdd_like / f"1_ann_{fault}.wav"
    write_bad_clip(bad, fault)
    capsys.readouterr()
    for argv, out in ((["train", "--task", "audio-cls", "--model", tiny_ast_config, "--data", str(fsdd_like),
                        "--max-steps", "1", "--output", str(tmp_path / "again")], tmp_path / "again"),
                      (["eval", "--adapter-path", str(run), "--datasets", str(fsdd_like), "--output",
                        str(tmp_path / "eval"), "--no-progress"], tmp_path / "eval")):
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and f"{bad} {message}" in lines[0], lines
        assert not out.exists()


def test_reading_a_clip_refuses_what_listing_would(tmp_path: Path) -> None:
    """read_audio (a file changed after it was listed) refuses NaN / inf and empty clips as list_audio does."""
    for fault in ("nan", "empty"):
        write_bad_clip(tmp_path / f"{fault}.wav", fault)
        with pytest.raises(ValueError, match=f"{fault}.wav holds"):
            read_audio(tmp_path / f"{fault}.wav", 16000)
        with pytest.raises(ValueError, match=f"{fault}.wav holds"):
            list_audio(tmp_path)
        (tmp_path / f"{fault}.wav").unlink()
