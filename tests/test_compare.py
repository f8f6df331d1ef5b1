"""`adapterlab compare`: time to best and to full fine-tuning's targets, verdicts derived from the numbers, the
training clock that leaves evaluation out, and a real (tiny) comparison end to end with its outputs."""

from __future__ import annotations

import csv
import json

import pytest
from train_helpers import encoder_folder, write_sst

from adapterlab.cli import main
from adapterlab.compare import analyse, compare
from adapterlab.train.callbacks import MetricsLog


def record(method, seed, curve, task="sst2", stored=100, latency=None):
    points = [{"step": 10 * (i + 1), "train_time_s": t, "score": s} for i, (t, s) in enumerate(curve)]
    return {"method": method, "task": task, "seed": seed, "metric": "eval_accuracy", "curve": points,
            "steps": 10 * len(curve), "train_tokens": None, "trainable_parameters": stored, "stored_bytes": stored,
            "peak_rss_mb": 1.0, "peak_cuda_mb": None, "latency": latency}


def test_targets_come_from_full_fine_tunings_mean_best_and_runs_reach_them_at_their_first_evaluation():
    records = [record("full", 0, [(1, 0.70), (2, 0.80), (3, 0.78)]), record("full", 1, [(1, 0.60), (2, 0.90)]),
               record("lora", 0, [(2, 0.50), (4, 0.84), (6, 0.86)]), record("lora", 1, [(2, 0.50), (4, 0.70)])]
    result = analyse(records, [0.99, 0.95], {})
    assert result["targets"]["sst2"] == pytest.approx({"99%": 0.99 * 0.85, "95%": 0.95 * 0.85})
    rows = {(r["method"], r["seed"]): r for r in result["rows"]}
    assert rows["full", 0]["time_to_best_s"] == 2 and rows["full", 0]["steps_to_best"] == 20
    assert rows["lora", 0]["time_to_95%_s"] == 4 and rows["lora", 0]["time_to_99%_s"] == 6
    assert rows["lora", 1]["time_to_95%_s"] is None  # never reached 0.8075
    lora = next(s for s in result["summary"] if s["method"] == "lora")
    assert (lora["time_to_95%_s"]["n"], lora["time_to_95%_s"]["of"]) == (1, 2)


def test_verdict_is_derived_from_the_numbers():
    full_latency = {"b1": {"unmerged_ms": 10.0, "merged_ms": None}}
    records = [record("full", 0, [(1, 0.80), (2, 0.90)], stored=1000, latency=full_latency),
               record("houlsby", 0, [(2, 0.85), (4, 0.90)], stored=10,
                      latency={"b1": {"unmerged_ms": 13.0, "merged_ms": None}})]
    verdict = analyse(records, [0.99], {})["verdicts"]["houlsby"]
    assert "+0.0 points" in verdict
    assert "1/1 runs, 2.00x full's training time when it did (slower than full)" in verdict
    assert "latency at batch 1: +30% unmerged, cannot merge" in verdict
    assert "stores 1% of full's bytes" in verdict


def test_training_clock_leaves_out_evaluation_and_saving(monkeypatch, tmp_path):
    """Step ends at 1 s and 2 s, an evaluation takes 5 s, a save 3 s, the next step ends 1 s after the save."""
    now = iter([0.0, 1.0, 2.0, 7.0, 10.0, 11.0])
    monkeypatch.setattr("adapterlab.train.callbacks.time.perf_counter", lambda: next(now))

    class State:
        is_world_process_zero, global_step, epoch = True, 0, 0.0

    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.on_train_begin(None, State, None)  # t=0
    log.on_step_end(None, State, None)  # t=1
    log.on_step_end(None, State, None)  # t=2
    log.on_log(None, State, None, logs={"eval_accuracy": 0.5})
    log.on_evaluate(None, State, None)  # t=7
    log.on_save(None, State, None)  # t=10
    log.on_step_end(None, State, None)  # t=11
    log.on_log(None, State, None, logs={"loss": 1.0})
    times = [json.loads(line)["train_time_s"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert times == [2.0, 3.0]


@pytest.mark.slow
def test_a_tiny_comparison_writes_its_report(tmp_path):
    model = encoder_folder(tmp_path / "bert")
    data, other = write_sst(tmp_path / "data.tsv", 80), write_sst(tmp_path / "other.tsv", 40, seed=3)
    result = compare(str(model), [str(data), str(other)], ["full", "lora"], str(tmp_path / "out"), seeds=2,
                     max_steps=8, eval_steps=2, patience=10, batch_size=8, cutoff_len=32, isolate=False,
                     options={"lora": {"r": 2}})
    out = tmp_path / "out"
    for name in ("report.md", "results.json", "results.csv", "curves.png"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted((r["task"], r["method"], r["seed"]) for r in rows) == [
        (task, method, seed) for task in ("data", "other") for method in ("full", "lora") for seed in "01"]
    for r in result["records"]:
        assert [p["step"] for p in r["curve"]] == [2, 4, 6, 8]
        times = [p["train_time_s"] for p in r["curve"]]
        assert times == sorted(times) and times[0] > 0
        assert not (tmp_path / "out" / "runs" / "data" / f"{r['method']}-seed{r['seed']}" / "checkpoints").exists()
    latency = {r["method"]: r["latency"] for r in result["records"] if r["seed"] == 0}
    assert latency["lora"]["b1"]["merged_ms"] > 0 and latency["full"]["b1"]["merged_ms"] is None
    assert "**lora**" in (out / "report.md").read_text()
    # the dev set is held out once, so every run is scored on the same records
    assert (out / "data" / "data" / "dev.tsv").is_file()
    lora = next(s for s in result["summary"] if s["method"] == "lora")
    full = next(s for s in result["summary"] if s["method"] == "full")
    assert lora["stored_bytes"] < full["stored_bytes"] / 10
    # serving both tasks: two adapters on one base hold fewer parameters than two full models
    serving = {row["method"]: row for row in result["serving"]}
    assert serving["lora"]["examples_per_s"] > 0 and serving["full"]["tasks"] == 2
    assert serving["lora"]["parameter_mb"] < serving["full"]["parameter_mb"]
    assert "Serving every task at once" in (out / "report.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--methods", "full,lora,nope"], "unknown ['nope']"),
    (["--methods", "full,multitask-full"], "multitask-full"),
    (["--methods", "full,lora", "--lr", "ia3=1e-3"], "--lr was given for ['ia3']"),
    (["--tasks", "no-such-task"], "neither a known task"),
    (["--targets", "1.5"], "--targets"),
    (["--seeds", "0"], "--seeds must be a positive integer"),
])
def test_bad_requests_are_refused_in_one_line_before_any_run(argv, message, tmp_path, capsys):
    data = write_sst(tmp_path / "data.tsv", 10)
    base = ["compare", "--model", "minilm-l6", "--tasks", str(data), "--output", str(tmp_path / "out")]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "runs").exists()


def child_level(name: str) -> int:
    import logging

    return logging.getLogger(name).level


def test_an_isolated_run_logs_as_the_cli_told_its_parent():
    """The CLI quiets bitsandbytes' optional-kernel warning; compare's spawned runs must stay quiet too."""
    import logging

    from adapterlab.compare.runs import run_isolated

    logger = logging.getLogger("adapterlab.test.quiet")
    logger.setLevel(logging.ERROR)
    try:
        assert run_isolated(child_level, True, "adapterlab.test.quiet") == logging.ERROR
    finally:
        logger.setLevel(logging.NOTSET)


def test_known_commonsense_names_find_their_files_in_llm_adapters_layout(tmp_path):
    """siqa/obqa/... read commonsense/<set>.json (+ train_<set>.json when present), as eval names them."""
    from adapterlab.compare.tasks import resolve_task
    from adapterlab.errors import MissingPathError

    folder = tmp_path / "commonsense"
    folder.mkdir()
    for name in ("social_i_qa.json", "train_social_i_qa.json", "winogrande.json"):
        (folder / name).write_text("[]")
    siqa = resolve_task("siqa", str(tmp_path))
    assert (siqa.task, siqa.train.name, siqa.dev.name) == ("multiple-choice", "train_social_i_qa.json",
                                                          "social_i_qa.json")
    winogrande = resolve_task("winogrande", str(tmp_path))  # no training file: dev is held out of the test file
    assert (winogrande.train.name, winogrande.dev) == ("winogrande.json", None)
    with pytest.raises(MissingPathError, match="train_openbookqa.json or commonsense/openbookqa.json"):
        resolve_task("obqa", str(tmp_path))


def test_help_suggests_a_small_first_run_that_parses(capsys):
    """`compare --help` ends with a small first run; that command is one the parser accepts as written."""
    from adapterlab.cli import build_parser

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    epilog = " ".join(build_parser().commands["compare"].epilog.split())
    command = epilog.split("; adapterlab ")[1].split(". Then")[0].split()
    args = build_parser().parse_args(command)
    assert (args.tasks, args.methods, args.seeds, args.max_steps) == ("boolq", "full,lora", 1, 60)
    assert "small first run" in " ".join(capsys.readouterr().out.split())
