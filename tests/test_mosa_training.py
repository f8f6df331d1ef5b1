"""MoSA through the training recipe on tiny models: the per-step draws and the loss survive gradient
accumulation, activation checkpointing, resume and torchrun; the run folder holds the merged plain adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as T
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

import adapterlab
from adapterlab.cli import main
from adapterlab.train import TrainConfig, load_run, train
from train_helpers import causal_folder, make_tokenizer, math_records, write_json, write_sst

ROOT = Path(__file__).resolve().parents[1]
LORA_BASE = {"base": "lora", "modules": 4, "split": "both", "r": 4, "targets": ["q", "v"]}
PFEIFFER_BASE = {"base": "pfeiffer", "modules": 4, "size": 8}


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return causal_folder(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    """A tiny BERT without dropout, so that runs that split a batch differently can match exactly."""
    directory = tmp_path_factory.mktemp("bert")
    tok = make_tokenizer(directory)
    config = T.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          vocab_size=len(tok), pad_token_id=tok.pad_token_id, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0)
    T.set_seed(0)
    T.BertModel(config).save_pretrained(directory)
    return directory


@pytest.fixture()
def math_file(tmp_path) -> Path:
    return write_json(tmp_path / "math.json", math_records(24))


def mosa_config(model: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(model=str(model), data=[str(data)], output=str(out), adapter="mosa",
                    adapter_options=dict(LORA_BASE), max_steps=4, batch_size=4, micro_batch_size=2,
                    warmup_steps=0, lr=1e-2, logging_steps=1, save_steps=2)
    return TrainConfig(**{**settings, **overrides})


def logged(out: Path, key: str) -> list[float]:
    return [r[key] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if key in r]


def assert_same_files(a: Path, b: Path, names: tuple[str, ...] = ("adapter.safetensors",), atol: float = 1e-6) -> None:
    for name in names:
        first, second = load_file(str(a / name)), load_file(str(b / name))
        assert first.keys() == second.keys(), name
        for key in first:
            torch.testing.assert_close(second[key], first[key], rtol=1e-5, atol=atol, msg=f"{name}: {key}")


class KeepModel(TrainerCallback):
    """Holds on to the model the Trainer trained (the MoSA model itself, before anything is reloaded)."""

    model = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.model = model


@pytest.mark.parametrize("task, options", [
    ("causal-lm", LORA_BASE),
    ("seq-cls", PFEIFFER_BASE),
    ("seq-cls", {**PFEIFFER_BASE, "consistency": 0.0}),  # no objective: the model's own loss
], ids=["causal-lm-consistency", "seq-cls-consistency", "seq-cls-own-loss"])
def test_gradient_accumulation_keeps_the_draws_and_the_result(llama, bert, math_file, tmp_path, task, options):
    """Batch 4 in one micro-batch of 4 or two of 2: same draws, same loss and gradient norm, same adapter."""
    if task == "causal-lm":
        model, data = llama, math_file
    else:
        model, data = bert, write_sst(tmp_path / "train.tsv", 32)
    runs = {}
    for micro in (4, 2):
        runs[micro] = tmp_path / f"micro{micro}"
        train(mosa_config(model, data, runs[micro], task=task, adapter_options=dict(options), max_steps=3,
                          micro_batch_size=micro, save_steps=3))
    # The loss is normalised over the whole accumulated batch (not summed over micro-batch means).
    assert logged(runs[2], "loss") == pytest.approx(logged(runs[4], "loss"), rel=1e-5)
    assert logged(runs[2], "grad_norm") == pytest.approx(logged(runs[4], "grad_norm"), rel=1e-4)
    assert_same_files(runs[4], runs[2], ("adapter.safetensors",) + (("head.safetensors",) if task == "seq-cls" else ()))


def test_activation_checkpointing_gives_the_same_adapter(llama, math_file, tmp_path):
    """Recomputation in the backward sees the step's draws: checkpointing on == off (lora base, consistency 1)."""
    plain = train(mosa_config(llama, math_file, tmp_path / "plain", max_steps=3, save_steps=3,
                              adapter_options={**LORA_BASE, "consistency": 1.0}))
    ckpt = train(mosa_config(llama, math_file, tmp_path / "ckpt", max_steps=3, save_steps=3,
                             adapter_options={**LORA_BASE, "consistency": 1.0}, gradient_checkpointing=True))
    assert plain["steps"] == ckpt["steps"] == 3
    assert logged(tmp_path / "ckpt", "loss") == pytest.approx(logged(tmp_path / "plain", "loss"), rel=1e-5)
    assert_same_files(tmp_path / "plain", tmp_path / "ckpt")


@pytest.mark.parametrize("options, method, split, dense", [
    (LORA_BASE, "lora", {"lora_A", "lora_B"}, set()),
    ({"base": "parallel", "modules": 4, "size": 8}, "parallel", {"up"}, {"down"}),
], ids=["lora", "parallel"])
def test_run_folder_holds_the_plain_base_adapter(llama, math_file, tmp_path, options, method, split, dense):
    """The saved adapter is the merged base adapter: a fresh base model loading it matches the MoSA model in eval."""
    out, keep = tmp_path / "run", KeepModel()
    train(mosa_config(llama, math_file, out, adapter_options=dict(options)), callbacks=[keep])
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["method"] == method and "modules" not in saved and "base" not in saved
    weights = load_file(str(out / "adapter.safetensors"))
    assert weights and not any(".parts." in k or ".biases." in k for k in weights)
    # The run config records MoSA and its options (what --resume and a rerun compare against).
    recorded = yaml.safe_load((out / "train_config.yaml").read_text())
    assert recorded["adapter"] == "mosa" and recorded["adapter_options"] == options
    # Training checkpoints hold the split state: split projections as one flat parameter (+ bias) per module.
    state = load_file(str(out / "checkpoints" / "checkpoint-2" / "trainable.safetensors"))
    projections = {k.split(".adapterlab.default.")[1].split(".")[0]: k for k in state}
    assert set(projections) == split | dense
    for key in state:
        projection, parameter = key.split(".adapterlab.default.")[1].split(".")[:2]
        assert parameter in (("parts", "biases") if projection in split else ("weight", "bias")), key

    tokenizer = T.AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["tom had 3 apples and got 4 more", "the answer is"], return_tensors="pt", padding=True)
    mosa_model = keep.model.eval()
    plain = adapterlab.load_adapter(T.AutoModelForCausalLM.from_pretrained(llama), out).eval()
    base = T.AutoModelForCausalLM.from_pretrained(llama).eval()
    with torch.no_grad():
        expected = mosa_model(**batch).logits
        torch.testing.assert_close(plain(**batch).logits, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(base(**batch).logits, expected, atol=1e-4), "the adapter learned nothing"


KILL_SCRIPT = """
import os, signal, sys
import yaml
from transformers import TrainerCallback
from adapterlab.train import TrainConfig, train

class Kill(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

train(TrainConfig(**yaml.safe_load(open(sys.argv[1]))), callbacks=[Kill()])
"""


@pytest.mark.slow
def test_resume_continues_the_draws(llama, math_file, tmp_path):
    """kill -9 after checkpoint-2, then --resume to step 4 == an unbroken 4-step run (same adapter, same losses).

    (A run cannot be stopped by max_steps and resumed with a larger one: --resume refuses other settings, and
    the linear schedule depends on max_steps.)
    """
    def config(out: Path, **kw) -> TrainConfig:
        return mosa_config(llama, math_file, out, adapter_options={**LORA_BASE, "dropout": 0.1}, **kw)

    train(config(tmp_path / "straight"))
    script, settings = tmp_path / "kill.py", tmp_path / "config.yaml"
    script.write_text(KILL_SCRIPT)
    settings.write_text(yaml.safe_dump(config(tmp_path / "broken").to_dict()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, str(script), str(settings), "2"], capture_output=True, text=True,
                            env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "broken" / "adapter.safetensors").exists()
    summary = train(config(tmp_path / "broken", resume=True))
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] == 4
    assert_same_files(tmp_path / "straight", tmp_path / "broken", atol=1e-7)
    losses = [logged(tmp_path / run, "loss") for run in ("straight", "broken")]
    assert len(losses[0]) == 4 and losses[1] == pytest.approx(losses[0], rel=1e-6)


@pytest.mark.slow
def test_torchrun_two_processes_match_one(llama, tmp_path):
    """torchrun 2 CPU processes (gloo), with and without activation checkpointing == 1 process: same adapter.

    Modules not drawn in a step get no gradient on any rank, which DDP accepts only with find_unused_parameters.
    """
    records = math_records(24)
    for r in records:  # equal lengths, as in test_train's DDP test
        r["instruction"] = r["instruction"][:40]
    data = write_json(tmp_path / "even.json", records)
    # --lora-r, not --r: torchrun's own parser rejects --r as an ambiguous abbreviation of its options.
    args = ["--model", str(llama), "--data", str(data), "--adapter", "mosa", "--base", "lora", "--modules", "4",
            "--mosa-split", "both", "--lora-r", "4", "--targets", "q,v", "--max-steps", "3", "--batch-size", "4",
            "--micro-batch-size", "2", "--warmup-steps", "0", "--lr", "1e-2", "--save-steps", "3",
            "--logging-steps", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    single = subprocess.run([sys.executable, "-m", "adapterlab", "train", *args, "--output", str(tmp_path / "one")],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert single.returncode == 0, single.stderr[-3000:]
    for name, extra in (("two", []), ("two-ckpt", ["--gradient-checkpointing"])):
        ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                              "adapterlab", "train", *args, *extra, "--output", str(tmp_path / name)],
                             capture_output=True, text=True, env=env, cwd=ROOT)
        assert ddp.returncode == 0, f"{name}: {ddp.stderr[-3000:]}"
        assert json.loads((tmp_path / name / "summary.json").read_text())["world_size"] == 2
        assert_same_files(tmp_path / "one", tmp_path / name, atol=1e-5)


def test_cli_trains_mosa_with_lora_base(llama, math_file, tmp_path, capsys):
    """The issue's command line (--mosa-split: --split is the training flag of audio's dev split)."""
    out = tmp_path / "run"
    code = main(["train", "--model", str(llama), "--data", str(math_file), "--output", str(out),
                 "--adapter", "mosa", "--base", "lora", "--modules", "4", "--mosa-split", "both", "--r", "4",
                 "--targets", "q,v", "--max-steps", "2", "--batch-size", "4", "--micro-batch-size", "2",
                 "--warmup-steps", "0", "--lr", "1e-2"])
    assert code == 0, capsys.readouterr().err
    recorded = yaml.safe_load((out / "train_config.yaml").read_text())
    assert recorded["adapter_options"] == LORA_BASE
    assert recorded["split"] == "random"  # the training flag of that name is untouched
    assert json.loads((out / "adapter_config.json").read_text())["method"] == "lora"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("adapterlab train: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.reliability
@pytest.mark.parametrize("flags, named", [
    (["--base", "prompt"], ["`base` 'prompt'"]),
    (["--base", "parallel", "--r", "4"], ["--r is", "--mosa-split"]),
], ids=["base-prompt", "r-with-parallel"])
def test_cli_refuses_a_mosa_base_or_option_that_cannot_apply(llama, math_file, tmp_path, capsys, flags, named):
    """train --adapter mosa with --base prompt, or --r with --base parallel -> one line naming it, exit 2, before the model loads"""
    out = tmp_path / "run"
    code = main(["train", "--model", str(llama), "--data", str(math_file), "--output", str(out),
                 "--adapter", "mosa", *flags, "--max-steps", "1"])
    assert code == 2
    line = one_line_error(capsys)
    assert all(text in line for text in named), line
    assert " --split" not in line  # the option list names MoSA's flag, not the training flag of that name
    assert not out.exists(), "nothing half-written"


def test_seq_cls_dev_accuracy_is_that_of_the_merged_adapter(bert, tmp_path):
    """MoSA (pfeiffer base) on BERT: the dev metrics logged in training are those of the saved plain adapter."""
    train_file, dev_file = write_sst(tmp_path / "train.tsv", 32), write_sst(tmp_path / "dev.tsv", 12, seed=1)
    out = tmp_path / "run"
    code = main(["train", "--task", "seq-cls", "--model", str(bert), "--data", str(train_file),
                 "--eval-data", str(dev_file), "--output", str(out), "--adapter", "mosa", "--base", "pfeiffer",
                 "--modules", "4", "--size", "8", "--max-steps", "4", "--batch-size", "4", "--micro-batch-size", "4",
                 "--warmup-steps", "0", "--lr", "1e-2", "--eval-steps", "2"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    best = summary["best_metric"]
    assert best["name"] == "eval_accuracy"
    logged_eval = next(r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                       if "eval_loss" in r and r["step"] == best["step"])
    assert json.loads((out / "adapter_config.json").read_text())["method"] == "pfeiffer"

    tokenizer = T.AutoTokenizer.from_pretrained(out)
    rows = [line.split("\t", 1) for line in dev_file.read_text().splitlines()[1:]]
    labels = torch.tensor([int(label) for label, _ in rows])
    batch = tokenizer([text for _, text in rows], return_tensors="pt", padding=True)
    model = load_run(T.AutoModelForSequenceClassification.from_pretrained(bert, num_labels=2), out).eval()
    with torch.no_grad():
        logits = model(**batch).logits
    assert float((logits.argmax(-1) == labels).float().mean()) == pytest.approx(best["value"])
    loss = float(torch.nn.functional.cross_entropy(logits, labels))
    assert loss == pytest.approx(logged_eval["eval_loss"], rel=1e-4)


@pytest.mark.parametrize("adapter, options, expected", [("mosa", LORA_BASE, True), ("lora", {"r": 4}, None)])
def test_ddp_looks_for_unused_parameters_of_a_stochastic_adapter(llama, tmp_path, adapter, options, expected):
    """Modules not drawn get no gradient: DDP must search for unused parameters, also under checkpointing
    (where the Trainer turns the search off unless told); other adapters keep the Trainer's default."""
    from types import SimpleNamespace

    from adapterlab.train.recipe import training_arguments

    config = TrainConfig(model=str(llama), data=["d.json"], output=str(tmp_path), adapter=adapter,
                         adapter_options=dict(options), gradient_checkpointing=True)
    model = adapterlab.attach(T.AutoModelForCausalLM.from_pretrained(llama), adapter, **options)
    setup = SimpleNamespace(model=model, eval_dataset=None, num_tokens=None, group_by_length=False)
    assert training_arguments(config, setup, tmp_path).ddp_find_unused_parameters is expected
