"""benchmarks/petl_fsdd.py: its commands parse as adapterlab train commands; its tables read finished runs right."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "petl_fsdd.py"
spec = importlib.util.spec_from_file_location("petl_fsdd", SCRIPT)
bench = sys.modules.setdefault("petl_fsdd", importlib.util.module_from_spec(spec))  # dataclasses look it up
spec.loader.exec_module(bench)

FOLDS = ["george", "jackson"]


def write_cross_validation(out: Path, scores: list[float], walls: tuple[float, ...] = (30.0, 30.0)) -> None:
    """A finished --cross-validate run folder as adapterlab writes it: cross_validation.json and fold summaries."""
    rows = [{"fold": f, "run": f"fold-{f}", "best_dev": {"name": "eval_accuracy", "value": v, "step": 10},
             "test": None, "steps": 10, "wall_time_s": t} for f, v, t in zip(FOLDS, scores, walls)]
    out.mkdir(parents=True, exist_ok=True)
    (out / bench.SUMMARY_JSON).write_text(json.dumps({"folds": rows}))
    for f, v in zip(FOLDS, scores):
        (out / f"fold-{f}").mkdir()
        (out / f"fold-{f}" / "summary.json").write_text(json.dumps(
            {"best_metric": {"name": "eval_accuracy", "value": v, "step": 10}, "wall_time_s": 30.0,
             "trainable_parameters": 1234}))


def test_residual_cells_pass_their_method_and_residual_to_adapterlab():
    """The 2x2 is pfeiffer/parallel x --residual true/false, and each command is one adapterlab train accepts."""
    from adapterlab.cli import build_parser
    from adapterlab.commands.train import config_and_notes

    seen = {}
    for cell in bench.study(["residual", "kernels", "fewshot"], ["lora"], [5], 2.0, 40):
        argv = bench.command(cell, 1, Path("fsdd"), Path("out"), None)
        config, _ = config_and_notes(build_parser().parse_args(argv))
        assert config.cross_validate and config.split == "fsdd-speakers" and config.seed == 1
        seen[cell.name] = (config.adapter, config.adapter_options, config.few_shot, config.max_steps)
    assert seen["sequential-without-residual"][:2] == ("pfeiffer", {"size": 32, "residual": False})
    assert seen["parallel-with-residual"][:2] == ("parallel", {"size": 32, "residual": True})
    assert seen["conformer-k8"][1] == {"kernel_size": 8}
    assert seen["lora-5shot"][2:] == (5, 40)


def test_table_gives_mean_and_std_over_seeds_of_fold_means(tmp_path):
    """Two seeds of fold means 0.8 and 0.6 -> 0.700 ± 0.100, fold spread the mean of the per-seed fold stds."""
    cell = next(c for c in bench.study(["residual"], [], [], 1.0, 1) if c.name == "sequential-with-residual")
    write_cross_validation(tmp_path / "residual" / cell.name / "seed-0", [0.9, 0.7])
    write_cross_validation(tmp_path / "residual" / cell.name / "seed-1", [0.6, 0.6])
    entry = bench.collect(cell, [0, 1], tmp_path, None)
    assert entry["summary"]["mean"] == pytest.approx(0.7) and entry["summary"]["std"] == pytest.approx(0.1)
    assert entry["summary"]["fold_std"] == pytest.approx(0.05) and entry["trainable"] == 1234
    table = bench.markdown({cell.name: entry})
    assert "| sequential | 0.700 ± 0.100 (folds ± 0.050) | – |" in table


def test_time_per_fold_is_the_median_so_a_resumed_fold_does_not_skew_it(tmp_path):
    """A fold resumed from its checkpoint records only its resumed seconds; the median over folds ignores it."""
    cell = next(c for c in bench.study(["residual"], [], [], 1.0, 1) if c.name == "parallel-without-residual")
    write_cross_validation(tmp_path / "residual" / cell.name / "seed-0", [0.5, 0.5], walls=(50.0, 4.0))
    write_cross_validation(tmp_path / "residual" / cell.name / "seed-1", [0.5, 0.5], walls=(52.0, 48.0))
    table = bench.markdown({cell.name: bench.collect(cell, [0, 1], tmp_path, None)})
    assert "| parallel | 0.500 ± 0.000 (folds ± 0.000) | 1234 | 49 |" in table


def test_a_fold_subset_reads_fold_summaries_and_an_unfinished_run_reads_as_missing(tmp_path):
    """--folds: scores come from fold-K/summary.json; a fold without one -> None (the script runs it)."""
    write_cross_validation(tmp_path, [0.5, 0.7])
    (tmp_path / bench.SUMMARY_JSON).unlink()
    assert bench.fold_scores(tmp_path, None) is None
    assert bench.fold_scores(tmp_path, ["jackson"]) == {"jackson": {"best_dev": 0.7, "wall_time_s": 30.0}}
    assert bench.fold_scores(tmp_path, ["jackson", "lucas"]) is None
