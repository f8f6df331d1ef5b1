"""Audio (AST on FSDD) and vision (ViT on scikit-learn's digits) classification, end to end with `adapterlab train`.

No pretrained AST or ViT weights can be downloaded here, so every run starts from a randomly initialised
small model (`config:ast-small`, `config:vit-small`): the point is that the data pipelines, the tasks and
the recipe train end to end on real data and the loss falls, not pretrained-model accuracy. Each run is a
plain `adapterlab train` command (printed); results go to a JSON file and a loss/accuracy figure.

Data: the Free Spoken Digit Dataset (3000 8 kHz recordings, 6 speakers; dev = takes 0-4 of every
speaker and digit, the FSDD convention) and the 1797 8x8 digit images bundled with scikit-learn
(`pip install scikit-learn`), written out as an image folder under --work (never committed).

    flock /tmp/heavy.lock env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_audio_vision.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import time
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from adapterlab.cli import main as adapterlab_main  # noqa: E402

FSDD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fsdd" / "recordings"
COMMON = ["--batch-size", "32", "--micro-batch-size", "32", "--logging-steps", "10", "--warmup-steps", "50",
          "--seed", "0", "--save-total-limit", "1"]
AUDIO = ["--task", "audio-cls", "--model", "config:ast-small", "--split", "fsdd", "--max-length", "100"]
VISION = ["--task", "image-cls", "--model", "config:vit-small", "--val-size", "0.2"]
# name -> (modality, flags); lr for the random base is higher than for fine-tuning a pretrained one.
RUNS: dict[str, tuple[str, list[str]]] = {
    "audio-full": ("audio", [*AUDIO, "--adapter", "full", "--lr", "1e-3", "--epochs", "10"]),
    "audio-lora": ("audio", [*AUDIO, "--adapter", "lora", "--r", "8", "--lr", "3e-3", "--epochs", "10"]),
    "audio-conformer": ("audio", [*AUDIO, "--adapter", "conformer", "--lr", "3e-3", "--epochs", "10"]),
    "vision-full": ("vision", [*VISION, "--adapter", "full", "--lr", "1e-3", "--epochs", "15"]),
    "vision-lora": ("vision", [*VISION, "--adapter", "lora", "--r", "8", "--lr", "3e-3", "--epochs", "15"]),
}


def write_digits(folder: Path) -> Path:
    """scikit-learn's 8x8 digits (grey levels 0-16) as `folder/<digit>/<index>.png`; reused when present."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    if folder.is_dir() and sum(1 for _ in folder.rglob("*.png")) == len(digits.target):
        return folder
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels * 255 / 16).astype(np.uint8)).save(folder / str(label) / f"{index:04d}.png")
    return folder


def read_log(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training-loss records, evaluation records) of a run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r], [r for r in rows if "eval_accuracy" in r]


def run(name: str, modality: str, flags: list[str], data: Path, work: Path) -> dict:
    """One `adapterlab train` run; its command, losses, dev accuracies and summary figures."""
    argv = ["train", *flags, "--data", str(data), "--output", str(work / name), "--overwrite"]
    print("$ adapterlab " + shlex.join(argv), flush=True)
    start = time.perf_counter()
    code = adapterlab_main(argv)
    if code:
        raise SystemExit(f"{name}: adapterlab train exited with {code}")
    summary = json.loads((work / name / "summary.json").read_text())
    losses, evals = read_log(work / name)
    return {
        "command": "adapterlab " + shlex.join(argv), "modality": modality,
        "wall_time_s": round(time.perf_counter() - start, 1), "steps": summary["steps"],
        "trainable_parameters": summary["trainable_parameters"], "total_parameters": summary["total_parameters"],
        "train_records": summary["data"]["train_records"], "dev_records": summary["data"]["dev_records"],
        "first_loss": losses[0]["loss"], "last_loss": losses[-1]["loss"],
        "loss": [(r["step"], r["loss"]) for r in losses],
        "dev_accuracy": [(r["step"], r["eval_accuracy"]) for r in evals],
        "best_dev_accuracy": max(r["eval_accuracy"] for r in evals),
    }


def plot(results: dict[str, dict], png: Path) -> None:
    """Training loss and dev accuracy against steps, one column per modality."""
    modalities = sorted({r["modality"] for r in results.values()})
    fig, axes = plt.subplots(2, len(modalities), figsize=(5 * len(modalities), 6), squeeze=False)
    for col, modality in enumerate(modalities):
        for name, r in results.items():
            if r["modality"] == modality:
                axes[0][col].plot(*zip(*r["loss"]), label=name)
                axes[1][col].plot(*zip(*r["dev_accuracy"]), marker="o", label=name)
        axes[0][col].set(title=f"{modality}: training loss", xlabel="step", ylabel="cross-entropy")
        axes[1][col].set(title=f"{modality}: dev accuracy", xlabel="step", ylabel="accuracy", ylim=(0, 1))
        axes[0][col].legend()
        axes[1][col].legend()
    fig.tight_layout()
    fig.savefig(png, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--fsdd", type=Path, default=FSDD, help="folder of FSDD recordings")
    parser.add_argument("--work", type=Path, default=Path("/tmp/adapterlab-audio-vision"), help="run folders")
    here = Path(__file__).parent
    parser.add_argument("--results", type=Path, default=here / "results" / "train_audio_vision.json")
    parser.add_argument("--figure", type=Path, default=here / "figures" / "train_audio_vision.png")
    args = parser.parse_args()
    data = {"audio": args.fsdd}
    if any(RUNS[n][0] == "vision" for n in args.runs):
        data["vision"] = write_digits(args.work / "sklearn-digits")
    results = {}
    for name in args.runs:
        modality, flags = RUNS[name]
        results[name] = run(name, modality, [*COMMON, *flags], data[modality], args.work)
        print(f"{name}: loss {results[name]['first_loss']:.3f} -> {results[name]['last_loss']:.3f}, "
              f"best dev accuracy {results[name]['best_dev_accuracy']:.3f}", flush=True)
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "torch": torch.__version__, "runs": results,
    }
    args.results.write_text(json.dumps(report, indent=1))
    plot(results, args.figure)
    print(f"wrote {args.results} and {args.figure}")


if __name__ == "__main__":
    main()
