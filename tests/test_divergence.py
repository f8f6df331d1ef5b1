"""A training step whose loss or gradient norm is NaN or inf stops the run, for every task: one line naming the
step, the last good checkpoint kept, nothing written of the bad step (`adapterlab.train.trainer`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from adapterlab.cli import main
from adapterlab.errors import TrainingDivergedError, UserError
from adapterlab.train import TrainConfig, train
from test_audio import TINY_AST, write_tone
from test_image import image_folder, write_config
from test_multiple_choice import choice_records
from train_helpers import causal_folder, encoder_folder, math_records, write_json, write_sst

BAD_STEP = 3
TASKS = ["causal-lm", "seq-cls", "multiple-choice", "audio-cls", "image-cls"]


@pytest.fixture(scope="module")
def text_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"llama": causal_folder(root / "llama"), "bert": encoder_folder(root / "bert")}


def task_settings(task: str, text_models: dict[str, Path], root: Path) -> dict:
    """TrainConfig fields of a tiny run of `task`: model, data and a dev set."""
    if task == "causal-lm":
        return dict(model=str(text_models["llama"]), data=[str(write_json(root / "math.json", math_records(16)))],
                    val_size=4)
    if task == "seq-cls":
        return dict(model=str(text_models["bert"]), data=[str(write_sst(root / "train.tsv", 16))],
                    eval_data=[str(write_sst(root / "dev.tsv", 4, seed=1))])
    if task == "multiple-choice":
        return dict(model=str(text_models["bert"]), data=[str(write_json(root / "mc.json", choice_records(16)))],
                    eval_data=[str(write_json(root / "dev.json", choice_records(4, seed=1)))])
    if task == "audio-cls":
        (root / "ast.json").write_text(json.dumps(TINY_AST))
        (root / "clips").mkdir()
        for digit in range(2):
            for index in range(6):
                write_tone(root / "clips" / f"{digit}_ann_{index}.wav", 300 + 400 * digit + 10 * index)
        return dict(model=f"config:{root / 'ast.json'}", data=[str(root / "clips")], val_size=4)
    return dict(model=f"config:{write_config(root)}", data=[str(image_folder(root / "images", ["a", "b"], 6))],
                val_size=4)


class Poison(TrainerCallback):
    """At the start of step BAD_STEP, make it diverge: NaN LoRA weights (a NaN loss), or an inf gradient on one
    of them (a finite loss with an inf gradient norm)."""

    def __init__(self, fault: str) -> None:
        self.fault = fault

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step != BAD_STEP - 1:
            return
        lora = [p for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n]
        if self.fault == "loss":
            with torch.no_grad():
                for param in lora:
                    param.fill_(float("nan"))
        else:
            lora[0].register_hook(lambda grad: grad * float("inf"))


def assert_stopped_at_the_bad_step(out: Path, error: Exception) -> None:
    """The run ended naming step BAD_STEP; checkpoints and best/ are of earlier steps, finite; no adapter written."""
    assert f"Training diverged at step {BAD_STEP}:" in str(error) and "\n" not in str(error)
    assert f"checkpoint-{BAD_STEP - 1} is the last good checkpoint" in str(error)
    steps = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*"))
    assert steps == list(range(1, BAD_STEP)), steps
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["step"] < BAD_STEP
    for state in (load_file(str(out / "best" / "trainable.safetensors")),
                  load_file(str(out / "checkpoints" / f"checkpoint-{BAD_STEP - 1}" / "trainable.safetensors"))):
        assert all(torch.isfinite(t).all() for t in state.values())
    written = {p.name for p in out.iterdir()}
    assert not written & {"adapter_config.json", "adapter.safetensors", "head.safetensors", "summary.json"}, written
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in logged) < BAD_STEP and all(math.isfinite(r.get("loss", 0.0)) for r in logged)


@pytest.mark.reliability
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("fault", ["loss", "grad_norm"])
def test_nan_or_inf_step_stops_the_run(task, fault, text_models, tmp_path, single_thread):
    """training loss or gradient norm turning NaN/inf (any task) -> stop naming the step, keep the last good
    checkpoint, write no adapter of that step"""
    out = tmp_path / "run"
    config = TrainConfig(task=task, output=str(out), adapter="lora", adapter_options={"r": 2}, max_steps=5,
                         batch_size=2, micro_batch_size=2, warmup_steps=0, lr=1e-3, logging_steps=1, eval_steps=1,
                         save_steps=1, **task_settings(task, text_models, tmp_path))
    with pytest.raises(TrainingDivergedError) as caught:
        train(config, callbacks=[Poison(fault)])
    problem = "the training loss is nan" if fault == "loss" else "the gradient norm is inf"
    assert problem in str(caught.value)
    assert_stopped_at_the_bad_step(out, caught.value)


@pytest.mark.reliability
def test_huge_learning_rate_exits_non_zero_with_one_line(text_models, tmp_path, capsys, single_thread):
    """--lr 1e30 (the loss turns NaN/inf a few steps in) -> exit 2, one line naming the step, no adapter"""
    settings = task_settings("seq-cls", text_models, tmp_path)
    out = tmp_path / "run"
    code = main(["train", "--task", "seq-cls", "--model", settings["model"], "--data", *settings["data"],
                 "--eval-data", *settings["eval_data"], "--adapter", "lora", "--r", "2", "--lr", "1e30",
                 "--max-grad-norm", "0", "--max-steps", "8", "--batch-size", "2", "--micro-batch-size", "2",
                 "--warmup-steps", "0", "--eval-steps", "1", "--output", str(out)])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line or "Traceback" in line]
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith("adapterlab train: error: Training diverged at step"), errors
    assert not (out / "adapter.safetensors").exists() and not (out / "summary.json").exists()
    assert issubclass(TrainingDivergedError, UserError)
