"""wav2vec 2.0 and HuBERT through `--task audio-cls` (raw waveforms, frozen feature encoder, which methods work and
which refuse), and `--pooling` (AST's mean over all tokens by a hook) kept through save, eval and export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_audio import TINY_AST, write_tone
from transformers import default_data_collator

import adapterlab
from adapterlab.cli import main
from adapterlab.errors import UserError
from adapterlab.core.sites import architecture_of
from adapterlab.tasks import audio
from adapterlab.tasks.audio_models import fit
from adapterlab.tasks.base import TaskOptions
from adapterlab.tasks.scratch import build_classifier
from adapterlab.train import TrainConfig, load_run
from adapterlab.train.recipe import make_trainable

# 3 convolutions (strides 5, 4, 4): 4,000 samples (0.25 s at 16 kHz) -> 49 frames; no LayerDrop, so that a
# training step runs every layer.
TINY_WAVEFORM = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     conv_dim=(16, 16, 16), conv_kernel=(10, 4, 4), conv_stride=(5, 4, 4), num_conv_pos_embeddings=16,
                     num_conv_pos_embedding_groups=4, classifier_proj_size=16, layerdrop=0.0)
# pre-norm layers, layer-norm feature encoder: the variant that takes an attention mask (wav2vec2-large-lv60)
STABLE = dict(do_stable_layer_norm=True, feat_extract_norm="layer")
LENGTH = 4000
METHODS = [("lora", {"r": 4}), ("houlsby", {}), ("adaptformer", {}), ("conformer", {}), ("ia3", {}),
           ("bitfit", {}), ("prefix", {"num_virtual_tokens": 3}), ("prompt", {"num_virtual_tokens": 3}),
           ("linear_probe", {})]


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    """3 digits x 4 takes of 0.25 s tones at 8 kHz, named like FSDD."""
    root = tmp_path_factory.mktemp("audio") / "recordings"
    root.mkdir()
    for digit in range(3):
        for index in range(4):
            write_tone(root / f"{digit}_ann_{index}.wav", 300 + 400 * digit + 10 * index)
    return root


def spec(tmp_path: Path, model_type: str, **extra) -> str:
    path = tmp_path / f"{model_type}.json"
    path.write_text(json.dumps({"model_type": model_type, **TINY_WAVEFORM, **extra}))
    return f"config:{path}"


def eval_probabilities(folder: Path) -> torch.Tensor:
    """The class probabilities `adapterlab eval` wrote for the recordings, one row per file (labels 0, 1, 2)."""
    rows = [json.loads(line) for line in (folder / "recordings.predictions.jsonl").open()]
    return torch.tensor([[row["probabilities"][label] for label in "012"] for row in rows])


def prepared(model_spec: str, recordings: Path):
    """(the task's setup at LENGTH samples, a batch of 4 of its training examples)."""
    setup = audio.prepare(TaskOptions(model=model_spec, data=[str(recordings)], options={"max_length": LENGTH}))
    return setup, default_data_collator([setup.train_dataset[i] for i in range(4)])


@pytest.mark.parametrize("model_type", ["wav2vec2", "hubert"])
def test_waveform_model_trains_and_evaluates_from_the_cli(tmp_path, recordings, model_type, single_thread):
    """Two LoRA steps on 16 kHz waveforms cut to --max-length samples; eval rebuilds the run and scores it."""
    run = tmp_path / "run"
    assert main(["train", "--task", "audio-cls", "--model", spec(tmp_path, model_type), "--data", str(recordings),
                 "--max-length", str(LENGTH), "--adapter", "lora", "--r", "4", "--max-steps", "2", "--batch-size",
                 "4", "--micro-batch-size", "4", "--warmup-steps", "0", "--output", str(run)]) == 0
    data = json.loads((run / "summary.json").read_text())["data"]
    assert (data["max_length"], data["sampling_rate"], data["pooling"]) == (LENGTH, 16000, "mean")
    assert main(["eval", "--adapter-path", str(run), "--datasets", str(recordings), "--output",
                 str(tmp_path / "eval"), "--no-progress"]) == 0
    assert len((tmp_path / "eval" / "recordings.predictions.jsonl").read_text().splitlines()) == 12


@pytest.mark.parametrize("model_type", ["wav2vec2", "hubert"])
@pytest.mark.parametrize("stable", [False, True], ids=["post-norm", "pre-norm"])
def test_gradients_reach_only_adapter_and_head(tmp_path, recordings, model_type, stable, single_thread):
    """Every method that works on these models trains its own modules and the head (projector, classifier) only; the
    convolutional feature encoder gets no gradient, and the backward pass stops before it."""
    model_spec = spec(tmp_path, model_type, **(STABLE if stable else {}))
    setup, batch = prepared(model_spec, recordings)
    assert batch["input_values"].shape == (4, LENGTH) and ("attention_mask" in batch) == stable
    assert setup.trainable_modules == ["projector", "classifier"]
    arch = architecture_of(setup.model)
    assert arch.post_norm != stable and arch.attn_norm == ("layer_norm" if stable else None)
    for method, options in METHODS:
        if stable and method == "prompt":
            continue  # refused: see test_prompt_with_an_attention_mask_is_refused
        model = audio.build_model(TaskOptions(model=model_spec, data=[], options={"max_length": LENGTH}),
                                  setup.info["labels"])[0]
        make_trainable(model.train(), TrainConfig(adapter=method, adapter_options=options), setup.trainable_modules)
        model(**batch).loss.backward()
        grads = {n for n, p in model.named_parameters() if p.grad is not None}
        assert any("adapterlab" in n for n in grads), method
        assert all("adapterlab" in n or n.split(".")[0] in ("projector", "classifier") for n in grads), method
        assert not any(".feature_extractor." in n for n in grads if "adapterlab" not in n), method
        assert not model.base_model.feature_extractor._requires_grad, method


def test_full_fine_tuning_keeps_the_feature_encoder_frozen(tmp_path, recordings, single_thread):
    setup, batch = prepared(spec(tmp_path, "wav2vec2"), recordings)
    assert setup.frozen_modules == ["wav2vec2.feature_extractor"]
    make_trainable(setup.model, TrainConfig(adapter="full"), setup.trainable_modules, setup.frozen_modules)
    trainable = {n for n, p in setup.model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("wav2vec2.feature_extractor.") for n in trainable)
    assert "wav2vec2.encoder.layers.0.attention.q_proj.weight" in trainable


@pytest.mark.parametrize("method", ["lora", "bitfit"])
@pytest.mark.parametrize("stable", [False, True], ids=["post-norm", "pre-norm"])
def test_merged_equals_unmerged(tmp_path, recordings, method, stable, single_thread):
    """LoRA (and BitFit, whose deltas sit on the feature encoder's GroupNorm too) merged = unmerged outputs."""
    setup, batch = prepared(spec(tmp_path, "wav2vec2", **(STABLE if stable else {})), recordings)
    model = adapterlab.attach(setup.model.eval(), method)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adapterlab" in name:
                p.normal_(std=0.1)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        unmerged = model(**inputs).logits
        with adapterlab.disabled(model):
            base = model(**inputs).logits
        adapterlab.merge(model)
        merged = model(**inputs).logits
    assert not torch.allclose(unmerged, base, atol=1e-4)
    assert torch.allclose(merged, unmerged, atol=1e-5)


@pytest.mark.reliability
def test_prompt_with_an_attention_mask_is_refused(tmp_path, recordings, capsys, single_thread):
    """prompt tuning on a wav2vec2 that takes an attention mask -> one-line error: the tokens would not fit the mask"""
    model_spec = spec(tmp_path, "wav2vec2", **STABLE)
    code = main(["train", "--task", "audio-cls", "--model", model_spec, "--data", str(recordings), "--max-length",
                 str(LENGTH), "--adapter", "prompt", "--max-steps", "1", "--batch-size", "4", "--micro-batch-size",
                 "4", "--output", str(tmp_path / "run")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("adapterlab train: error: Virtual tokens"), lines
    assert "attention_mask" in lines[0] and "prefix, lora or a bottleneck adapter" in lines[0]
    assert not (tmp_path / "run").exists()  # refused before the run folder was written


@pytest.mark.reliability
@pytest.mark.parametrize("pooling,says", [("cls", "has no class token"), ("max", "must be one of")])
def test_bad_pooling_is_refused(tmp_path, recordings, capsys, pooling, says):
    """--pooling cls on wav2vec2 (no class token), or an unknown --pooling -> one-line error naming the flag"""
    code = main(["train", "--task", "audio-cls", "--model", spec(tmp_path, "wav2vec2"), "--data", str(recordings),
                 "--pooling", pooling, "--output", str(tmp_path / "run")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("adapterlab train: error: --pooling"), lines
    assert says in lines[0] and not (tmp_path / "run").exists()


@pytest.mark.reliability
def test_weighted_layer_sum_is_refused(tmp_path, recordings):
    """a wav2vec2 config with use_weighted_layer_sum -> error: its layer weights would stay untrained and unsaved"""
    with pytest.raises(UserError, match="use_weighted_layer_sum"):
        prepared(spec(tmp_path, "wav2vec2", use_weighted_layer_sum=True), recordings)


def test_mean_pooling_feeds_the_token_mean_to_the_head(tmp_path):
    (tmp_path / "ast.json").write_text(json.dumps(TINY_AST))
    model, extractor = build_classifier(f"config:{tmp_path / 'ast.json'}", "audio-cls", ["a", "b", "c"], seed=0)
    x = torch.randn(2, 32, 16)
    with torch.no_grad():
        hidden = model.eval().base_model(x).last_hidden_state
        assert torch.allclose(model(x).logits, model.classifier((hidden[:, 0] + hidden[:, 1]) / 2), atol=1e-6)
        fit(model, extractor, {"pooling": "mean"}, "tiny")
        assert torch.allclose(model(x).logits, model.classifier(hidden.mean(dim=1)), atol=1e-6)


def test_mean_pooling_survives_save_eval_and_refuses_export(tmp_path, recordings, capsys, single_thread):
    """The run's train_config.yaml keeps --pooling mean; eval's predictions are the mean-pooled model's; export, whose
    transformers model cannot carry the hook, refuses in one line."""
    from transformers import ASTFeatureExtractor
    from tiny_models import tiny_model

    checkpoint = tmp_path / "ast"
    tiny_model("ast").save_pretrained(checkpoint)
    ASTFeatureExtractor(num_mel_bins=16, max_length=32).save_pretrained(checkpoint)
    run = tmp_path / "run"
    assert main(["train", "--task", "audio-cls", "--model", str(checkpoint), "--data", str(recordings), "--pooling",
                 "mean", "--adapter", "lora", "--r", "4", "--max-steps", "2", "--batch-size", "6", "--micro-batch-size",
                 "6", "--warmup-steps", "0", "--lr", "1e-2", "--output", str(run)]) == 0
    assert yaml.safe_load((run / "train_config.yaml").read_text())["pooling"] == "mean"
    assert main(["eval", "--adapter-path", str(run), "--datasets", str(recordings), "--output",
                 str(tmp_path / "eval"), "--no-progress"]) == 0
    options = TaskOptions(model=str(checkpoint), data=[str(recordings)])
    files, names = audio.read_examples([str(recordings)], options)
    model, extractor = audio.build_model(options, ["0", "1", "2"])  # transformers' own pooling: by hand below
    load_run(model.eval(), run)
    dataset = audio.make_dataset(files, [int(n) for n in names], extractor, options)[0]
    batch = default_data_collator([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        logits = model.classifier(model.base_model(batch["input_values"]).last_hidden_state.mean(dim=1))
    assert torch.allclose(eval_probabilities(tmp_path / "eval"), logits.softmax(-1), atol=1e-5)

    capsys.readouterr()
    assert main(["export", "--adapter-path", str(run), "--merged", str(tmp_path / "merged")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines()
             if line.strip() and not line.startswith("Loading weights")]  # transformers' own loading bar
    assert len(lines) == 1 and "--pooling mean" in lines[0] and not (tmp_path / "merged").exists()


def test_presets_build_at_one_second(tmp_path):
    """config:wav2vec2-small / hubert-small: tiny random models at the default length, 16,000 samples."""
    for preset in ("wav2vec2-small", "hubert-small"):
        model, extractor = audio.build_model(TaskOptions(model=f"config:{preset}", data=[]), ["a", "b"])
        assert extractor.max_length == 16000 and not extractor.return_attention_mask
        assert sum(p.numel() for p in model.parameters()) < 1_000_000
        assert model(input_values=torch.randn(1, 16000)).logits.shape == (1, 2)


def test_waveform_checkpoint_run_keeps_its_length_and_exports_merged(tmp_path, recordings, single_thread):
    """A LoRA run on a saved wav2vec2 checkpoint saves its --max-length with the extractor, and export --merged
    writes a plain transformers model that computes what the restored run computes."""
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    from adapterlab.train.restore import restore_run

    checkpoint, run = tmp_path / "wav2vec2-checkpoint", tmp_path / "run"
    for part in build_classifier(spec(tmp_path, "wav2vec2"), "audio-cls", ["x", "y"], seed=0):
        part.save_pretrained(checkpoint)
    assert main(["train", "--task", "audio-cls", "--model", str(checkpoint), "--data", str(recordings), "--max-length",
                 str(LENGTH), "--adapter", "lora", "--r", "4", "--max-steps", "2", "--batch-size", "4",
                 "--micro-batch-size", "4", "--warmup-steps", "0", "--lr", "1e-2", "--output", str(run)]) == 0
    assert AutoFeatureExtractor.from_pretrained(run).max_length == LENGTH
    assert main(["export", "--adapter-path", str(run), "--merged", str(tmp_path / "merged")]) == 0
    restored = restore_run(run)[0].eval()
    merged = AutoModelForAudioClassification.from_pretrained(tmp_path / "merged").eval()
    x = torch.randn(2, LENGTH)
    with torch.no_grad():
        assert torch.allclose(restored(input_values=x).logits, merged(input_values=x).logits, atol=1e-5)


def test_full_fine_tuning_run_is_evaluated_with_its_pooling(tmp_path, recordings, single_thread):
    """A full fine-tuning run saves a plain transformers AST, which pools as its class does; eval puts --pooling
    mean back, so its predictions are the mean-pooled model's."""
    from adapterlab.models import load_model

    (tmp_path / "ast.json").write_text(json.dumps(TINY_AST))
    run = tmp_path / "run"
    assert main(["train", "--task", "audio-cls", "--model", f"config:{tmp_path / 'ast.json'}", "--data",
                 str(recordings), "--pooling", "mean", "--adapter", "full", "--max-steps", "1", "--batch-size", "6",
                 "--micro-batch-size", "6", "--warmup-steps", "0", "--output", str(run)]) == 0
    assert main(["eval", "--adapter-path", str(run), "--datasets", str(recordings), "--output",
                 str(tmp_path / "eval"), "--no-progress"]) == 0
    model, extractor = load_model(str(run), task="audio-cls")
    fit(model, extractor, {"pooling": "mean"}, str(run))
    options = TaskOptions(model=str(run), data=[str(recordings)])
    files, names = audio.read_examples([str(recordings)], options)
    dataset = audio.make_dataset(files, [int(n) for n in names], extractor, options)[0]
    with torch.no_grad():
        logits = model(input_values=default_data_collator([dataset[i] for i in range(12)])["input_values"]).logits
    assert torch.allclose(eval_probabilities(tmp_path / "eval"), logits.softmax(-1), atol=1e-5)


@pytest.mark.reliability
@pytest.mark.parametrize("model_type", ["wav2vec2", "hubert"])
def test_max_length_too_short_for_the_feature_encoder_is_refused(tmp_path, recordings, model_type, capsys):
    """--max-length 10 on wav2vec2 / HuBERT -> one-line refusal naming the smallest length the model takes, before
    the run folder is written"""
    # TINY_WAVEFORM's encoder (kernels 10, 4, 4; strides 5, 4, 4) needs 85 samples for a frame, its time masking
    # (10 frames) 805
    argv = ["train", "--task", "audio-cls", "--model", spec(tmp_path, model_type), "--data", str(recordings),
            "--max-length", "10", "--max-steps", "1", "--output", str(tmp_path / "run")]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "needs at least 85 samples for one frame" in lines[0], lines
    assert "(mask_time_length 10) 805 samples; pass --max-length 805 or more" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mask_time_prob, smallest", [(0.05, 805), (0.0, 85)])
def test_smallest_waveform_length_is_exact(tmp_path, recordings, mask_time_prob, smallest):
    """The length named is the model's own bound: a training step runs at it, and transformers fails one sample
    below it (what the refusal spares the user, mid-run)."""
    model_spec = spec(tmp_path, "wav2vec2", mask_time_prob=mask_time_prob)
    with pytest.raises(UserError, match=f"pass --max-length {smallest} or more"):
        audio.prepare(TaskOptions(model=model_spec, data=[str(recordings)], options={"max_length": smallest - 1}))
    setup = audio.prepare(TaskOptions(model=model_spec, data=[str(recordings)], options={"max_length": smallest}))
    batch = default_data_collator([setup.train_dataset[i] for i in range(2)])
    assert torch.isfinite(setup.model.train()(**batch).loss)
    with pytest.raises((ValueError, RuntimeError)):
        setup.model(input_values=batch["input_values"][:, :smallest - 1], labels=batch["labels"])
