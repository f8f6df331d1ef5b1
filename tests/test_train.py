"""The training recipe end to end on tiny models: run folder, what is trained and saved, resume, refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors.torch import load_file

import adapterlab
from adapterlab.errors import AdapterError
from adapterlab.train import TrainConfig, load_run, train
from adapterlab.train.checkpointing import TRAINABLE_NAME
from train_helpers import causal_folder, encoder_folder, math_records, write_json, write_sst

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return causal_folder(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return encoder_folder(tmp_path_factory.mktemp("bert"))


@pytest.fixture()
def math_file(tmp_path) -> Path:
    return write_json(tmp_path / "math.json", math_records(24))


def lm_config(model: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(model=str(model), data=[str(data)], output=str(out), adapter="lora",
                    adapter_options={"r": 4, "targets": ["q", "v"]}, max_steps=4, batch_size=4,
                    micro_batch_size=2, warmup_steps=0, lr=1e-2, logging_steps=1, save_steps=2)
    return TrainConfig(**{**settings, **overrides})


def test_lora_run_folder_holds_a_loadable_adapter_and_records(llama, math_file, tmp_path):
    out = tmp_path / "run"
    summary = train(lm_config(llama, math_file, out, val_size=4, eval_steps=2))
    for name in ("adapter_config.json", "adapter.safetensors", "tokenizer_config.json", "train_config.yaml",
                 "metrics.jsonl", "summary.json", "loss.png", "best/trainable.safetensors"):
        assert (out / name).is_file(), name
    assert summary["steps"] == 4 and summary["best_metric"]["name"] == "eval_loss"
    assert summary["trainable_parameters"] > 0 and summary["tokens_per_s"] > 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 4
    # Checkpoints hold the adapter parameters only, plus optimizer state.
    checkpoint = out / "checkpoints" / "checkpoint-4"
    saved = load_file(str(checkpoint / TRAINABLE_NAME))
    assert saved and all(".adapterlab.default.lora_" in k for k in saved)
    assert (checkpoint / "optimizer.pt").is_file() and not (checkpoint / "model.safetensors").exists()
    # The run folder's adapter is the best dev checkpoint, and loads onto a fresh base model.
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "eval_loss" in r]
    assert summary["best_metric"]["step"] == min(evals, key=lambda r: r["eval_loss"])["step"]
    best = load_file(str(out / "best" / TRAINABLE_NAME))
    model = T.AutoModelForCausalLM.from_pretrained(llama)
    adapterlab.load_adapter(model, out)
    for name, param in model.named_parameters():
        if ".adapterlab." in name:
            assert torch.equal(param, best[name])


def test_only_adapter_parameters_change(llama, math_file, tmp_path):
    out = tmp_path / "run"
    train(lm_config(llama, math_file, out))
    base = T.AutoModelForCausalLM.from_pretrained(llama)
    trained = adapterlab.load_adapter(T.AutoModelForCausalLM.from_pretrained(llama), out)
    base_state = base.state_dict()
    for name, tensor in trained.state_dict().items():
        if ".adapterlab." not in name:
            assert torch.equal(tensor, base_state[name]), name
    lora_b = [t for n, t in trained.state_dict().items() if n.endswith("lora_B.weight")]
    assert any(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: the adapter did learn


def test_classification_trains_head_and_restores_it(bert, tmp_path):
    train_file, dev_file = write_sst(tmp_path / "train.tsv", 32), write_sst(tmp_path / "dev.tsv", 8, seed=1, text_column="content")
    out = tmp_path / "run"
    summary = train(TrainConfig(model=str(bert), data=[str(train_file)], eval_data=[str(dev_file)], task="seq-cls",
                                output=str(out), adapter="lora", adapter_options={"r": 4}, max_steps=4,
                                batch_size=4, micro_batch_size=4, warmup_steps=0, lr=1e-2, eval_steps=2))
    assert summary["best_metric"]["name"] == "eval_accuracy"
    assert json.loads((out / "labels.json").read_text())["labels"] == ["0", "1"]
    assert (out / "head.safetensors").is_file()
    tokenizer = T.AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["the film is good", "the film is bad"], return_tensors="pt", padding=True)

    def fresh():
        return T.AutoModelForSequenceClassification.from_pretrained(bert, num_labels=2).eval()

    restored = load_run(fresh(), out)
    reference = fresh()
    reference.requires_grad_(False)
    adapterlab.load_adapter(reference, out)
    state = load_file(str(out / "best" / TRAINABLE_NAME))
    assert any(k.startswith("classifier.") for k in state)  # the head was trained and checkpointed
    reference.load_state_dict({k: v for k, v in state.items() if k.startswith("classifier.")}, strict=False)
    with torch.no_grad():
        assert torch.allclose(restored(**batch).logits, reference(**batch).logits)
        assert not torch.allclose(restored(**batch).logits, fresh()(**batch).logits)


def test_full_fine_tuning_saves_the_whole_model(llama, math_file, tmp_path):
    out = tmp_path / "run"
    summary = train(lm_config(llama, math_file, out, adapter="full", adapter_options={}, lr=1e-3))
    assert summary["trainable_parameters"] == summary["total_parameters"]
    trained = T.AutoModelForCausalLM.from_pretrained(out)
    base = T.AutoModelForCausalLM.from_pretrained(llama)
    assert not torch.equal(trained.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)


def test_output_folder_of_another_run_is_refused_unless_overwrite(llama, math_file, tmp_path):
    out = tmp_path / "run"
    train(lm_config(llama, math_file, out, max_steps=2))
    with pytest.raises(AdapterError, match="another config .*lr"):
        train(lm_config(llama, math_file, out, max_steps=2, lr=1e-3))
    with pytest.raises(AdapterError, match="--resume to continue"):
        train(lm_config(llama, math_file, out, max_steps=2))
    with pytest.raises(AdapterError, match="other settings .*adapter_options"):
        train(lm_config(llama, math_file, out, max_steps=2, adapter_options={"r": 8}, resume=True))
    train(lm_config(llama, math_file, out, max_steps=2, lr=1e-3, overwrite=True))
    assert "lr: 0.001" in (out / "train_config.yaml").read_text()


@pytest.mark.parametrize("problem, match", [
    ("[{\"instruction\": \"x\", \"output\": \"y\"},", "math.json is not valid JSON"),
    ("[{\"instruction\": \"x\"}]", "record 0: missing field 'output'"),
    ("[]", "No training records"),
])
def test_bad_data_fails_before_anything_is_written(llama, tmp_path, problem, match):
    bad = tmp_path / "math.json"
    bad.write_text(problem)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        train(lm_config(llama, bad, out))
    assert not out.exists()


def test_unknown_target_fails_before_anything_is_written(llama, math_file, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(AdapterError, match="nonexistent"):
        train(lm_config(llama, math_file, out, adapter_options={"targets": ["nonexistent"]}))
    assert not out.exists()


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerCallback
    from adapterlab.train import TrainConfig, train
    import yaml
    config = TrainConfig(**yaml.safe_load(open(sys.argv[1])))
    kill_at = int(sys.argv[2])

    class Kill(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    train(config, callbacks=[Kill()] if kill_at else [])
""")


@pytest.mark.slow
def test_resume_after_kill_reaches_the_same_adapter(llama, math_file, tmp_path):
    """kill -9 in the middle of step 4; --resume from checkpoint-2 must end where an unbroken run ends."""
    import yaml

    def config(out: Path, **kw) -> TrainConfig:
        return lm_config(llama, math_file, out, max_steps=6, adapter_options={"r": 4, "dropout": 0.1}, **kw)

    train(config(tmp_path / "straight"))
    script, settings = tmp_path / "kill.py", tmp_path / "config.yaml"
    script.write_text(KILL_SCRIPT)
    settings.write_text(yaml.safe_dump(config(tmp_path / "broken").to_dict()))
    killed = subprocess.run([sys.executable, str(script), str(settings), "3"], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "broken" / "adapter.safetensors").exists()
    summary = train(config(tmp_path / "broken", resume=True))
    assert summary["resumed_from"].endswith("checkpoint-2")
    straight = load_file(str(tmp_path / "straight" / "adapter.safetensors"))
    resumed = load_file(str(tmp_path / "broken" / "adapter.safetensors"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-7)
    losses = [[r["loss"] for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
               if "loss" in r] for run in ("straight", "broken")]
    assert len(losses[0]) == 6
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


@pytest.mark.slow
def test_torchrun_two_processes_match_one(llama, math_file, tmp_path):
    """DDP on CPU (gloo) with the same global batch reaches the adapter a single process reaches.

    (--lora-r, not --r: torchrun's own parser rejects --r as an ambiguous abbreviation of its options.)
    """
    records = math_records(24)
    for r in records:  # equal lengths, so the per-process mean losses average to the global mean
        r["instruction"] = r["instruction"][:40]
    data = write_json(tmp_path / "even.json", records)
    args = ["--model", str(llama), "--data", str(data), "--adapter", "lora", "--lora-r", "4", "--targets", "q,v",
            "--max-steps", "3", "--batch-size", "4", "--micro-batch-size", "2", "--warmup-steps", "0",
            "--lr", "1e-2", "--save-steps", "3", "--logging-steps", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "adapterlab", "train", *args, "--output", str(tmp_path / "one")],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "adapterlab",
                          "train", *args, "--micro-batch-size", "2", "--output", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2
    one = load_file(str(tmp_path / "one" / "adapter.safetensors"))
    two = load_file(str(tmp_path / "two" / "adapter.safetensors"))
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)


def test_best_keeper_saves_on_improvement_and_stops_after_patience():
    from transformers import TrainerControl, TrainerState

    from adapterlab.train.callbacks import BestKeeper

    saved = []
    keeper = BestKeeper("eval_loss", False, lambda model, step, value: saved.append((step, value)), patience=2)
    state, control = TrainerState(), TrainerControl()
    for step, loss in [(1, 3.0), (2, 2.0), (3, 2.5), (4, float("nan")), (5, 2.2)]:
        state.global_step = step
        state.log_history.append({"step": step, "eval_loss": loss})
        keeper.on_evaluate(None, state, control, metrics={"eval_loss": loss})
        if step == 3:
            assert not control.should_training_stop
    assert saved == [(1, 3.0), (2, 2.0)]
    assert control.should_training_stop  # two evaluations (3 and 4) without beating step 2


def test_gradient_checkpointing_gives_the_same_adapter(llama, math_file, tmp_path):
    plain = train(lm_config(llama, math_file, tmp_path / "plain", max_steps=2))
    ckpt = train(lm_config(llama, math_file, tmp_path / "ckpt", max_steps=2, gradient_checkpointing=True))
    assert plain["steps"] == ckpt["steps"] == 2
    a = load_file(str(tmp_path / "plain" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "ckpt" / "adapter.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)


def test_decoder_classification_uses_its_score_head(llama, tmp_path):
    train_file = write_sst(tmp_path / "train.tsv", 24)
    out = tmp_path / "run"
    summary = train(TrainConfig(model=str(llama), data=[str(train_file)], task="seq-cls", output=str(out),
                                adapter="lora", adapter_options={"r": 4}, val_size=8, max_steps=2, batch_size=4,
                                micro_batch_size=4, warmup_steps=0, eval_steps=2))
    assert summary["best_metric"]["name"] == "eval_accuracy"
    assert set(load_file(str(out / "head.safetensors"))) == {"score.weight"}


def test_resume_skips_a_checkpoint_an_interrupt_cut_short(tmp_path):
    from adapterlab.train.checkpointing import last_checkpoint
    from adapterlab.train.run_dir import check_run_dir, write_run_config

    config = TrainConfig(model="m", data=["d.json"], output=str(tmp_path / "run"), resume=True)
    with pytest.raises(AdapterError, match="holds no run"):
        check_run_dir(tmp_path / "run", config)
    write_run_config(tmp_path / "run", config)
    with pytest.raises(AdapterError, match="no complete checkpoint"):
        check_run_dir(tmp_path / "run", config)
    checkpoints = tmp_path / "run" / "checkpoints"
    for step, complete in [(2, True), (10, True), (12, False)]:
        (checkpoints / f"checkpoint-{step}").mkdir(parents=True)
        if complete:
            (checkpoints / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_checkpoint(checkpoints).name == "checkpoint-10"
    assert check_run_dir(tmp_path / "run", config).name == "checkpoint-10"


def test_bf16_autocast_on_cpu_trains_float32_adapters(llama, math_file, tmp_path):
    summary = train(lm_config(llama, math_file, tmp_path / "run", max_steps=2, precision="bf16"))
    assert summary["precision"] == "bf16"
    assert all(t.dtype == torch.float32 for t in load_file(str(tmp_path / "run" / "adapter.safetensors")).values())
