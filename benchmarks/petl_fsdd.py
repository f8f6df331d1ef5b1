"""PETL for AST on FSDD (issue #13, Cappellazzo et al.): residual 2x2, conformer kernels, few-shot; per-speaker CV.

No pretrained AST can be downloaded here, so every run trains a randomly initialised `config:ast-small` (~0.8M
parameters, 4 layers, width 128): the figures compare the paper's ablations on one small model trained from
scratch, not pretrained-AST transfer. Each (cell, seed) is one plain `adapterlab train --split fsdd-speakers
--cross-validate` command (leave one of the 6 speakers out as the dev set; OUTPUT/cross_validation.json holds
each fold's best dev accuracy), run in a fresh process with the caller's OMP_NUM_THREADS (1 if unset) and its log
in WORK/TABLE/CELL/seed-S.log.

Cells (--cells): residual = {sequential (pfeiffer), parallel} x residual {true, false}, a bottleneck of 32 at
the MLP (the sequential-vs-parallel table reuses these runs); kernels = conformer kernel_size {7, 8, 31};
fewshot = --few-shot K (--shots) for --fewshot-methods (full, lora, conformer kernel 8), trained --fewshot-steps
steps. Recipe (as benchmarks/train_audio_vision.py): --max-length 100 frames, batch 32, warmup 50, lr 1e-3 (full)
or 3e-3 (adapters), --epochs 10 (one dev evaluation per epoch). A (cell, seed) whose cross_validation.json exists
is read back, not rerun (after checking it was made with the same settings), and an interrupted one resumes
fold by fold, so the benchmark can be continued across sessions. --folds runs only those speakers, one
`--fold K` command each, into the same fold-K folders a later full run reads back.

Cost, measured in the full run of 2026-11-27 (BENCHMARKS.md): a 10-epoch bottleneck fold ~69 s with one torch
thread on an otherwise idle core, ~49 s with two; a conformer fold ~67 s with one thread (~90 s beside another
one-thread job); a 200-step few-shot fold ~14 s (beside it). Residual (72 folds), kernels (54) and fewshot
(162 folds) took about 2 h 40 min in all on the 2 cores. `--folds george --seeds 0` is a ~1/18 pass.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/petl_fsdd.py --cells residual,kernels,fewshot \
        --seeds 0,1,2 --work runs/petl-fsdd --output benchmarks/results/petl_fsdd.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FSDD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fsdd" / "recordings"
COMMON = ["--task", "audio-cls", "--model", "config:ast-small", "--split", "fsdd-speakers", "--max-length", "100",
          "--batch-size", "32", "--micro-batch-size", "32", "--warmup-steps", "50", "--logging-steps", "10",
          "--save-total-limit", "1"]
BOTTLENECK = ["--size", "32", "--lr", "3e-3"]
METHODS = {"full": ["--adapter", "full", "--lr", "1e-3"], "lora": ["--adapter", "lora", "--r", "8", "--lr", "3e-3"],
           "conformer": ["--adapter", "conformer", "--kernel-size", "8", "--lr", "3e-3"]}
CELLS = ("residual", "kernels", "fewshot")
SUMMARY_JSON = "cross_validation.json"


@dataclass(frozen=True)
class Cell:
    """One configuration of the study: its table (`cell`), its run folder name and its training flags."""

    cell: str
    name: str
    flags: list[str]
    key: dict[str, Any] = field(default_factory=dict)


def study(cells: list[str], methods: list[str], shots: list[int], epochs: float, fewshot_steps: int) -> list[Cell]:
    """The cells of the chosen tables, each with its full flags (budget included)."""
    budget = ["--epochs", str(epochs)]
    plan = []
    if "residual" in cells:
        for placement, adapter in (("sequential", "pfeiffer"), ("parallel", "parallel")):
            for residual in (True, False):
                plan.append(Cell("residual", f"{placement}-{'with' if residual else 'without'}-residual",
                                 ["--adapter", adapter, *BOTTLENECK, "--residual", str(residual).lower(), *budget],
                                 {"placement": placement, "residual": residual}))
    if "kernels" in cells:
        plan += [Cell("kernels", f"conformer-k{k}", ["--adapter", "conformer", "--kernel-size", str(k), "--lr", "3e-3",
                                                      *budget], {"kernel_size": k}) for k in (7, 8, 31)]
    if "fewshot" in cells:
        every = str(max(1, fewshot_steps // 10))
        plan += [Cell("fewshot", f"{m}-{k}shot", [*METHODS[m], "--few-shot", str(k), "--max-steps", str(fewshot_steps),
                                                   "--eval-steps", every, "--save-steps", every], {"method": m, "k": k})
                 for m in methods for k in shots]
    return plan


def command(cell: Cell, seed: int, data: Path, out: Path, fold: str | None) -> list[str]:
    """The `adapterlab train` arguments of one (cell, seed): all folds, or just `fold` into out/fold-K."""
    where = ["--fold", fold, "--output", str(out / f"fold-{fold}")] if fold else ["--cross-validate", "--output",
                                                                                  str(out)]
    return ["train", *COMMON, *cell.flags, "--seed", str(seed), "--data", str(data), *where]


def fold_scores(out: Path, folds: list[str] | None) -> dict[str, dict[str, Any]] | None:
    """fold -> {best_dev, wall_time_s} of a finished (cell, seed); None if not finished. `folds` None: every fold
    of its cross_validation.json; else those folds' own summary.json files."""
    if folds is None:
        path = out / SUMMARY_JSON
        if not path.is_file():
            return None
        rows = json.loads(path.read_text())["folds"]
        return {r["fold"]: {"best_dev": r["best_dev"]["value"], "wall_time_s": r["wall_time_s"]} for r in rows}
    paths = {fold: out / f"fold-{fold}" / "summary.json" for fold in folds}
    if not all(p.is_file() for p in paths.values()):
        return None
    summaries = {fold: json.loads(p.read_text()) for fold, p in paths.items()}
    return {f: {"best_dev": s["best_metric"]["value"], "wall_time_s": s["wall_time_s"]} for f, s in summaries.items()}


def trainable(out: Path) -> int | None:
    """Trainable parameters of a (cell, seed), from its first fold's summary.json."""
    first = sorted(out.glob("fold-*/summary.json"))
    return json.loads(first[0].read_text())["trainable_parameters"] if first else None


def stale_settings(argv: list[str], folds: list[str]) -> list[str]:
    """Settings in which the finished fold runs of `argv` (its --output) differ from `argv`, so that a result is
    never reused after the settings changed; adapterlab's own parsing and --resume comparison."""
    from adapterlab.cli import build_parser
    from adapterlab.commands.train import config_and_notes
    from adapterlab.train.cross_validation import fold_config
    from adapterlab.train.run_dir import differences, read_run_config

    config, _ = config_and_notes(build_parser().parse_args(argv))
    plans = [fold_config(config, fold) for fold in folds] if config.cross_validate else [config]
    saved = [(read_run_config(Path(plan.output)), plan) for plan in plans]
    return sorted({name for settings, plan in saved if settings is not None for name in differences(settings, plan)})


def run_cell_seed(argv: list[str], log: Path, resume: bool) -> float:
    """Run one `adapterlab train` command (appending to `log`); its wall time. A failure stops the benchmark."""
    argv = [*argv, *(["--resume"] if resume else [])]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    print(f"$ OMP_NUM_THREADS={env['OMP_NUM_THREADS']} adapterlab " + shlex.join(argv), flush=True)
    start = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        code = subprocess.run([sys.executable, "-m", "adapterlab", *argv], stdout=handle, stderr=subprocess.STDOUT,
                              env=env).returncode
    if code:
        tail = log.read_text().splitlines()[-5:]
        raise SystemExit(f"adapterlab train exited with {code}; last lines of {log}:\n" + "\n".join(tail))
    return round(time.perf_counter() - start, 1)


def aggregate(seeds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Over seeds: mean and population std of the fold-mean dev accuracy; the fold spread is the mean over seeds
    of each seed's population std over folds (as cross_validation.json's std)."""
    means = [s["fold_mean"] for s in seeds.values()]
    return {"mean": statistics.fmean(means), "std": statistics.pstdev(means),
            "fold_std": statistics.fmean(s["fold_std"] for s in seeds.values()), "seeds": len(means),
            "folds": min(len(s["folds"]) for s in seeds.values())}


def seed_result(scores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One seed's folds, their mean and population std of the best dev accuracy, and each fold's training time."""
    values = [s["best_dev"] for s in scores.values()]
    return {"folds": {f: s["best_dev"] for f, s in scores.items()}, "fold_mean": statistics.fmean(values),
            "fold_std": statistics.pstdev(values), "fold_wall_s": {f: s["wall_time_s"] for f, s in scores.items()}}


def cell_text(entry: dict[str, Any] | None) -> str:
    """'mean ± std (folds ± s)' of a cell's entry, or a dash when the cell was not run."""
    if not entry:
        return "–"
    summary = entry["summary"]
    return f"{summary['mean']:.3f} ± {summary['std']:.3f} (folds ± {summary['fold_std']:.3f})"


def markdown(cells: dict[str, dict[str, Any]]) -> str:
    """The tables for BENCHMARKS.md: residual 2x2, sequential vs parallel, conformer kernels, few-shot."""
    def find(table: str, **key: Any) -> dict[str, Any] | None:
        return next((c for c in cells.values() if c["cell"] == table and c["key"] == key), None)

    tables = {c["cell"] for c in cells.values()}
    lines = []
    if "residual" in tables:
        lines += ["| bottleneck at the MLP | with residual | without residual |", "|---|---|---|"]
        lines += [f"| {p} | {cell_text(find('residual', placement=p, residual=True))} | "
                  f"{cell_text(find('residual', placement=p, residual=False))} |" for p in ("sequential", "parallel")]
        lines += ["", "| placement (residual off, PETL-for-AST's default) | dev accuracy | trainable "
                      "| s per fold (median) |", "|---|---|---|---|"]
        for p in ("sequential", "parallel"):
            entry = find("residual", placement=p, residual=False)
            if entry:
                per_fold = statistics.median(t for s in entry["seeds"].values() for t in s["fold_wall_s"].values())
                lines.append(f"| {p} | {cell_text(entry)} | {entry['trainable'] or '–'} | {per_fold:.0f} |")
        lines.append("")
    if "kernels" in tables:
        lines += ["| conformer kernel_size | dev accuracy | trainable |", "|---|---|---|"]
        lines += [f"| {c['key']['kernel_size']} | {cell_text(c)} | {c['trainable'] or '–'} |"
                  for c in cells.values() if c["cell"] == "kernels"]
        lines.append("")
    if "fewshot" in tables:
        keys = [c["key"] for c in cells.values() if c["cell"] == "fewshot"]
        shots = sorted({k["k"] for k in keys})
        lines += ["| method | " + " | ".join(f"K = {k}" for k in shots) + " |", "|---|" + "---|" * len(shots)]
        for m in dict.fromkeys(k["method"] for k in keys):
            lines.append(f"| {m} | " + " | ".join(cell_text(find("fewshot", method=m, k=k)) for k in shots) + " |")
        lines.append("")
    lines.append("Best dev accuracy (speaker held out), mean over folds; mean ± population std over seeds; "
                 "(folds ± s): mean over seeds of the population std over folds.")
    return "\n".join(lines) + "\n"


def speakers(data: Path) -> list[str]:
    """The speakers (fold names of --split fsdd-speakers) among the FSDD file names in `data`."""
    return sorted({p.stem.split("_")[1] for p in data.glob("*.wav") if p.stem.count("_") == 2})


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated subset of {', '.join(CELLS)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--folds", default=None, help="comma-separated speakers (default: all, one --cross-validate "
                                                      "command per cell and seed)")
    parser.add_argument("--epochs", type=float, default=10.0, help="epochs of the residual and kernels cells")
    parser.add_argument("--fewshot-methods", default=",".join(METHODS), help=f"subset of {', '.join(METHODS)}")
    parser.add_argument("--shots", default="1,5,10", help="few-shot K per class, comma-separated")
    parser.add_argument("--fewshot-steps", type=int, default=200, help="optimizer steps of each few-shot run")
    parser.add_argument("--data", type=Path, default=FSDD, help="folder of FSDD recordings")
    parser.add_argument("--work", type=Path, default=Path("runs/petl-fsdd"), help="run folders (kept for resuming)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/petl_fsdd.json"),
                        help="results JSON; the Markdown tables go beside it (.md)")
    args = parser.parse_args()
    split = lambda text: [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    args.cells, args.fewshot_methods = split(args.cells), split(args.fewshot_methods)
    for flag, given, allowed in (("--cells", args.cells, CELLS), ("--fewshot-methods", args.fewshot_methods, METHODS)):
        if not given or set(given) - set(allowed):
            parser.error(f"{flag} {','.join(given)}: choose from {', '.join(allowed)}")
    try:
        args.seeds, args.shots = [int(s) for s in split(args.seeds)], [int(k) for k in split(args.shots)]
    except ValueError as exc:
        parser.error(f"--seeds / --shots take comma-separated integers ({exc})")
    present = speakers(args.data)
    args.folds = split(args.folds) if args.folds else None
    if not present or (args.folds and set(args.folds) - set(present)):
        parser.error(f"--folds {args.folds}: the speakers in {args.data} are {', '.join(present) or 'none'}")
    return args


def run_seed(cell: Cell, seed: int, args: argparse.Namespace, folds: list[str]) -> dict[str, Any]:
    """Run the command(s) of one (cell, seed) unless finished (checked first to match); command -> wall time."""
    from adapterlab.train.run_dir import CONFIG_FILE

    out, runs = args.work / cell.cell / cell.name / f"seed-{seed}", {}
    for fold in args.folds or [None]:
        argv = command(cell, seed, args.data, out, fold)
        changed = stale_settings(argv, folds)
        if changed:
            raise SystemExit(f"{out} was trained with other settings ({', '.join(changed)} differ); delete it or "
                             "choose another --work.")
        run = runs.setdefault(fold or "all", {"command": "adapterlab " + shlex.join(argv), "skipped": True})
        if fold_scores(out, [fold] if fold else None) is None:
            started = (out / f"fold-{fold}" / CONFIG_FILE).is_file() if fold else any(out.glob(f"fold-*/{CONFIG_FILE}"))
            run.update(skipped=False, command_wall_s=run_cell_seed(argv, out.with_suffix(".log"), started))
    return runs


def collect(cell: Cell, seeds: list[int], work: Path, folds: list[str] | None) -> dict[str, Any]:
    """A finished cell's entry in the results: per seed its fold scores; trainable parameters; the summary."""
    out = work / cell.cell / cell.name
    results = {str(seed): seed_result(fold_scores(out / f"seed-{seed}", folds)) for seed in seeds}
    return {"cell": cell.cell, "key": cell.key, "seeds": results, "trainable": trainable(out / f"seed-{seeds[0]}"),
            "summary": aggregate(results)}


def main() -> None:
    args = parse_args()
    folds = args.folds or speakers(args.data)
    cells: dict[str, dict[str, Any]] = {}
    for cell in study(args.cells, args.fewshot_methods, args.shots, args.epochs, args.fewshot_steps):
        runs = {}
        for seed in args.seeds:
            runs[str(seed)] = run_seed(cell, seed, args, folds)
            result = seed_result(fold_scores(args.work / cell.cell / cell.name / f"seed-{seed}", args.folds))
            print(f"{cell.name} seed {seed}: dev accuracy {result['fold_mean']:.3f} over {len(result['folds'])} "
                  f"folds (std {result['fold_std']:.3f})", flush=True)
        cells[cell.name] = collect(cell, args.seeds, args.work, args.folds)
        for seed, seed_runs in runs.items():
            cells[cell.name]["seeds"][seed]["runs"] = seed_runs
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {os.cpu_count()} cores, OMP_NUM_THREADS="
                   f"{os.environ.get('OMP_NUM_THREADS', '1')} per run, load average {os.getloadavg()[0]:.1f} at end",
        "python": platform.python_version(), "torch": importlib.metadata.version("torch"),
        "script": "benchmarks/petl_fsdd.py " + shlex.join(sys.argv[1:]), "folds": folds, "seeds": args.seeds,
        "cells": cells,
    }
    report["markdown"] = markdown(cells)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))
    args.output.with_suffix(".md").write_text(report["markdown"])
    print(report["markdown"] + f"wrote {args.output} and {args.output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
