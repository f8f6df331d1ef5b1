"""The demo pipeline end to end on a tiny random Llama: every promised file is written, the table printed, and
the saved adapter is the one evaluated. The real demo (SmolLM2, minutes) is measured in BENCHMARKS.md, not here."""

from __future__ import annotations

import json

import pytest
from train_helpers import causal_folder

from adapterlab.cli import main
from adapterlab.demo.run import DemoConfig, run_demo
from adapterlab.errors import AdapterError, RunFolderError

FILES = ("adapter/adapter_config.json", "adapter/adapter.safetensors", "predictions_before.jsonl",
         "predictions_after.jsonl", "report.md", "loss.png", "summary.json", "data/train.json", "data/test.json")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return causal_folder(tmp_path_factory.mktemp("llama"))


def tiny_config(model, output, **changes) -> DemoConfig:
    settings = dict(model=str(model), output=str(output), train_problems=16, test_problems=6, steps=3,
                    batch_size=4, warmup_steps=0, cutoff_len=512, max_new_tokens=4, eval_batch_size=4, progress=False)
    return DemoConfig(**{**settings, **changes})


def test_demo_writes_every_promised_file_and_prints_the_table(tiny, tmp_path, single_thread):
    lines: list[str] = []
    summary = run_demo(tiny_config(tiny, tmp_path / "demo"), log=lines.append)
    out = tmp_path / "demo"
    for name in FILES:
        assert (out / name).is_file(), name
    assert not (out / "adapter" / "checkpoints").exists()
    assert not list(out.glob(".eval_*"))
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    printed = "\n".join(lines)
    assert "| base model |" in printed and "| base + LoRA adapter |" in printed and "3 steps" in printed
    for path in summary["files"].values():
        assert path in printed
    for which in ("before", "after"):
        rows = [json.loads(line) for line in (out / f"predictions_{which}.jsonl").read_text().splitlines()]
        assert len(rows) == 6 and summary[which]["n"] == 6
        assert summary[which]["correct"] == sum(r["correct"] for r in rows)
    test = {r["instruction"] for r in json.loads((out / "data" / "test.json").read_text())}
    train = {r["instruction"] for r in json.loads((out / "data" / "train.json").read_text())}
    assert not test & train
    assert set(summary["phase_seconds"]) >= {"evaluate base model", "train LoRA adapter", "evaluate with adapter",
                                             "total"}
    report = (out / "report.md").read_text()
    assert "![training loss](loss.png)" in report and "| base + LoRA adapter |" in report
    assert summary["adapter_bytes"] > 0 and summary["train"]["trainable_parameters"] > 0


def test_second_run_replaces_the_first(tiny, tmp_path, single_thread):
    config = tiny_config(tiny, tmp_path / "demo")
    first = run_demo(config, log=lambda _: None)
    second = run_demo(config, log=lambda _: None)
    assert first["before"]["correct"] == second["before"]["correct"]
    assert first["train"]["train_loss"] == pytest.approx(second["train"]["train_loss"])
    assert len((tmp_path / "demo" / "predictions_after.jsonl").read_text().splitlines()) == 6


def test_demo_command(tiny, tmp_path, capsys, single_thread):
    out = tmp_path / "cli"
    code = main(["demo", "--model", str(tiny), "--output", str(out), "--steps", "2", "--train-problems", "8",
                 "--test-problems", "3", "--batch-size", "4", "--cutoff-len", "512", "--max-new-tokens", "3", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| base + LoRA adapter |" in printed and str(out / "report.md") in printed
    assert json.loads((out / "summary.json").read_text())["train"]["steps"] == 2


@pytest.mark.parametrize("change", [{"steps": 0}, {"test_problems": -1}, {"train_minutes": 0}, {"template": "x"}])
def test_bad_settings_are_refused_before_anything_runs(tmp_path, change):
    with pytest.raises(AdapterError):
        run_demo(tiny_config("unused", tmp_path / "demo", **change))
    assert not (tmp_path / "demo").exists()


def test_time_limit_stops_training_early(tiny, tmp_path, single_thread):
    lines: list[str] = []
    summary = run_demo(tiny_config(tiny, tmp_path / "demo", train_minutes=1e-9), log=lines.append)
    assert summary["train"]["steps"] == 1 and summary["stopped_by_time_limit"]
    assert any("limit was reached" in line for line in lines)


def test_default_demo_trains_fixed_steps_and_says_how_long_it_takes():
    """The default demo has no time limit (its result cannot depend on the machine) and fits in 10 minutes."""
    from adapterlab.demo.run import expected_minutes

    assert DemoConfig().train_minutes is None and DemoConfig().steps == 80
    assert 3 < expected_minutes(DemoConfig()) < 10
    assert expected_minutes(DemoConfig(model="elsewhere")) is None


@pytest.mark.reliability
def test_demo_refuses_a_folder_that_holds_no_demo(tmp_path):
    """demo --output into a non-empty folder that holds no demo -> refused before anything is written; --overwrite replaces it"""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my notes")
    with pytest.raises(RunFolderError, match="--overwrite"):
        run_demo(tiny_config("unused", out))
    assert (out / "report.md").read_text() == "my notes" and sorted(p.name for p in out.iterdir()) == ["report.md"]


@pytest.mark.reliability
def test_demo_overwrite_writes_beside_foreign_files_but_never_into_a_repository(tiny, tmp_path, single_thread):
    """demo --overwrite into a folder holding a git repository -> refused, the repository untouched; into a folder
    holding other files -> the demo is written beside them, nothing of theirs removed (#19: one output-folder rule)"""
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "code.py").write_text("x = 1")
    with pytest.raises(RunFolderError, match="repository"):
        run_demo(tiny_config(tiny, repo, overwrite=True))
    assert (repo / "code.py").exists()
    out = tmp_path / "mine"
    out.mkdir()
    (out / "old.txt").write_text("old")
    run_demo(tiny_config(tiny, out, overwrite=True, steps=1, test_problems=2), log=lambda _: None)
    assert (out / "old.txt").read_text() == "old" and (out / "summary.json").is_file()
    run_demo(tiny_config(tiny, out, steps=1, test_problems=2), log=lambda _: None)  # an earlier demo: replaced
    assert (out / "old.txt").read_text() == "old" and (out / "summary.json").is_file()
    (out / "summary.json").unlink()
    (out / ".adapterlab-demo.json").unlink()
    (out / "summary.json").write_text("mine")
    with pytest.raises(RunFolderError, match="which no earlier demo wrote"):
        run_demo(tiny_config(tiny, out, overwrite=True, steps=1, test_problems=2), log=lambda _: None)
    assert (out / "summary.json").read_text() == "mine"


def test_loss_png_shows_the_before_and_after_accuracy(tmp_path, monkeypatch):
    """The demo's loss.png has a second panel: base and adapter accuracy as bars with their 95% intervals."""
    from matplotlib.figure import Figure

    from adapterlab.train.plot import plot_metrics

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss": 2.0 / s}) + "\n" for s in range(1, 6)))
    drawn: list[Figure] = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (drawn.append(fig), real(fig, *a, **k))[1])
    plot_metrics(metrics, tmp_path / "loss.png", "demo",
                 accuracy={"base model": (0.1, (0.05, 0.17)), "with adapter": (0.71, (0.61, 0.79))})
    loss, bars = drawn[0].axes
    assert [line.get_label() for line in loss.get_lines()] == ["train loss"]
    assert [round(p.get_height(), 1) for p in bars.patches] == [10.0, 71.0]
    assert [t.get_text() for t in bars.get_xticklabels()] == ["base model", "with adapter"]
    assert (tmp_path / "loss.png").stat().st_size > 0
    plot_metrics(metrics, tmp_path / "plain.png")  # a training run's own plot keeps one panel
    assert len(drawn[1].axes) == 1
