"""Sharded engines through accelerate: FSDP2 on 2 CPU processes (gloo) reaches the one-process adapter, checkpoints
and resume; the example accelerate configs launch what they name; engines that cannot run are refused by name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapterlab.errors import UsageError
from adapterlab.train import TrainConfig, train
from adapterlab.train.checkpointing import TRAINABLE_NAME
from train_helpers import causal_folder, math_records, write_json

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "accelerate"


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return causal_folder(tmp_path_factory.mktemp("llama"))


@pytest.fixture()
def even_file(tmp_path) -> Path:
    records = math_records(24)
    for r in records:  # equal lengths, so the per-process mean losses average to the global mean
        r["instruction"] = r["instruction"][:40]
    return write_json(tmp_path / "even.json", records)


def launch_env(config: str) -> dict[str, str]:
    """The environment `accelerate launch --config_file <config>` gives each process (nothing is started)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(EXAMPLES / config), "-m", "adapterlab", "train"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


def test_example_configs_launch_the_engines_they_name():
    ddp, fsdp = launch_env("ddp.yaml"), launch_env("fsdp.yaml")
    assert "ACCELERATE_USE_FSDP" not in ddp and "ACCELERATE_USE_DEEPSPEED" not in ddp
    assert fsdp["ACCELERATE_USE_FSDP"] == "true" and fsdp["FSDP_VERSION"] == "2"
    assert fsdp["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    for stage in (2, 3):
        env = launch_env(f"deepspeed_zero{stage}.yaml")
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(stage)


def lm_config(model: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(model=str(model), data=[str(data)], output=str(out), adapter="lora",
                    adapter_options={"r": 4, "targets": ["q", "v"]}, max_steps=2, batch_size=4,
                    micro_batch_size=2, warmup_steps=0, lr=1e-2, logging_steps=1)
    return TrainConfig(**{**settings, **overrides})


@pytest.mark.parametrize("env, adapter, message", [
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, "lora", "GPUs"),  # accelerate would train DDP here
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "lora", "fsdp_version: 2"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, "full", "--adapter full"),
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "lora", "DeepSpeed"),
])
def test_an_engine_that_cannot_run_is_refused_before_the_folder_is_written(llama, even_file, tmp_path, monkeypatch,
                                                                           env, adapter, message):
    if "ACCELERATE_USE_DEEPSPEED" in env and torch.cuda.is_available():
        pytest.skip("with a GPU, DeepSpeed may be installed and run")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    options = {} if adapter == "full" else {"r": 4, "targets": ["q", "v"]}
    out = tmp_path / "run"
    with pytest.raises(UsageError, match=message):
        train(lm_config(llama, even_file, out, adapter=adapter, adapter_options=options))
    assert not out.exists() or not any(out.iterdir())


def accelerate_fsdp(args: list[str], out: Path) -> subprocess.CompletedProcess:
    """`accelerate launch` with examples/accelerate/fsdp.yaml, 2 CPU processes (gloo), a free port (tests/cpu_fsdp.py
    keeps accelerate's FSDP on the CPU)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(EXAMPLES / "fsdp.yaml"),
               "--num_processes", "2", "--main_process_port", "0", "-m", "cpu_fsdp", "train", *args,
               "--output", str(out)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def assert_same(left: Path, right: Path) -> None:
    one, two = load_file(str(left)), load_file(str(right))
    assert one and one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_fsdp_two_cpu_processes_match_one_and_resume(llama, even_file, tmp_path):
    """FSDP2 over 2 processes with the same global batch saves the adapter, best/ and checkpoints a single process
    saves; the checkpoints hold optimizer state for the adapter parameters only, never the base, and --resume from
    one ends where the unbroken run ends."""
    train(lm_config(llama, even_file, tmp_path / "one", max_steps=4, save_steps=2, eval_steps=2, val_size=4))
    args = ["--model", str(llama), "--data", str(even_file), "--adapter", "lora", "--lora-r", "4", "--targets", "q,v",
            "--max-steps", "4", "--batch-size", "4", "--micro-batch-size", "2", "--warmup-steps", "0", "--lr", "1e-2",
            "--logging-steps", "1", "--save-steps", "2", "--eval-steps", "2", "--val-size", "4"]
    run = accelerate_fsdp(args, tmp_path / "fsdp")
    assert run.returncode == 0, run.stderr[-3000:]
    one, fsdp = tmp_path / "one", tmp_path / "fsdp"
    summary = json.loads((fsdp / "summary.json").read_text())
    assert summary["engine"] == "FSDP" and summary["world_size"] == 2
    assert_same(one / "adapter.safetensors", fsdp / "adapter.safetensors")
    assert_same(one / "best" / TRAINABLE_NAME, fsdp / "best" / TRAINABLE_NAME)
    checkpoint = fsdp / "checkpoints" / "checkpoint-2"
    assert_same(one / "checkpoints" / "checkpoint-2" / TRAINABLE_NAME, checkpoint / TRAINABLE_NAME)
    optimizer = torch.load(checkpoint / "optimizer.bin", weights_only=True)  # accelerate's FSDP optimizer file
    trainable = load_file(str(checkpoint / TRAINABLE_NAME))
    assert set(optimizer["state"]) == set(trainable) and all(".lora_" in k for k in trainable)
    assert not [p.name for p in checkpoint.iterdir() if "model" in p.name]  # no base weights written

    (fsdp / "adapter.safetensors").unlink()  # as if stopped in step 3: resume from checkpoint-2
    shutil.rmtree(fsdp / "checkpoints" / "checkpoint-4")
    resumed = accelerate_fsdp([*args, "--resume"], fsdp)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((fsdp / "summary.json").read_text())["resumed_from"].endswith("checkpoint-2")
    assert_same(one / "adapter.safetensors", fsdp / "adapter.safetensors")
