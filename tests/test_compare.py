"""`adapterlab compare`: time to best and to full fine-tuning's targets, verdicts derived from the numbers, the
training clock that leaves evaluation out, and a real (tiny) comparison end to end with its outputs."""

from __future__ import annotations

import csv
import json
import random
import shutil

import pytest
from train_helpers import encoder_folder, write_json, write_sst

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
    full_latency = {"b1": {"unmerged_ms": 10.0, "merged_ms": None, "repeats": {"unmerged": [10.0, 10.1, 9.9]}}}
    houlsby_latency = {"b1": {"unmerged_ms": 13.0, "merged_ms": None,  # full's model timed beside it
                              "repeats": {"full": [10.0, 10.0, 10.0], "unmerged": [12.8, 13.0, 13.2]}}}
    records = [record("full", 0, [(1, 0.80), (2, 0.90)], stored=1000, latency=full_latency),
               record("houlsby", 0, [(2, 0.85), (4, 0.90)], stored=10, latency=houlsby_latency)]
    verdict = analyse(records, [0.99], {})["verdicts"]["houlsby"]
    assert "+0.0 points" in verdict
    assert "1/1 runs, 2.00x full's training time when it did (slower than full)" in verdict
    assert "latency at batch 1 against full's model timed interleaved: unmerged +30% (+28% to +32% over 3 repeats), " \
           "cannot merge" in verdict
    assert "stores 1% of full's bytes" in verdict


def loaded_models(costs: dict[str, float], monkeypatch) -> dict:
    """Fake models of the given ms per forward on a fake clock under machine load: the first forward of each is
    5x (warm-up), and every forward is slowed by load that rises steeply over the run, plus seeded jitter of up to 10%."""
    rng, now, calls = random.Random(0), [0.0], []
    monkeypatch.setattr("adapterlab.compare.latency.time.perf_counter", lambda: now[0] / 1000)

    def model(name):
        def forward(**batch):
            load = (1 + len(calls) / 5) * rng.uniform(1.0, 1.1) * (5 if name not in calls else 1)
            calls.append(name)
            now[0] += costs[name] * load
        return forward

    return {name: model(name) for name in costs}


@pytest.mark.reliability
def test_equal_computations_timed_interleaved_read_no_measurable_difference(monkeypatch):
    """merged LoRA against full fine-tuning (the same computation) timed under warm-up, rising load and jitter -> the verdict says "no measurable difference", while a 1.3x slower model still reads about +30%"""
    from adapterlab.compare.latency import size_result, time_interleaved

    models = loaded_models({"full": 10.0, "unmerged": 13.0, "merged": 10.0}, monkeypatch)
    per_repeat = time_interleaved(models, [{"x": None}] * 4, repeats=7)
    assert all(len(v) == 7 for v in per_repeat.values())  # every repeat is kept, for results.json
    lora = {"b1": size_result(per_repeat, 3, 1)}
    records = [record("full", 0, [(1, 0.80)], stored=1000), record("lora", 0, [(1, 0.80)], stored=10, latency=lora)]
    result = analyse(records, [0.99], {})
    verdict = result["verdicts"]["lora"]
    assert "merged no measurable difference (" in verdict
    ratio = result["latency"]["lora"]["b1"]["unmerged_vs_full"]
    assert ratio["low"] > 1 and ratio["median"] == pytest.approx(1.3, abs=0.1)
    assert f"unmerged {100 * (ratio['median'] - 1):+.0f}% (" in verdict


def test_interleaved_timing_warms_every_model_up_untimed_and_rotates_the_order(monkeypatch):
    from adapterlab.compare.latency import time_interleaved

    order = []
    models = {name: (lambda name: lambda **batch: order.append(name))(name) for name in "ABC"}
    time_interleaved(models, [{}] * 3, repeats=2)
    assert order[:3] == list("ABC")  # warm-up on the first batch
    assert order[3:] == list("ABC" "BCA" "CAB" "ABC")  # 2 repeats x 2 timed batches, each batch in a new order


def baseline(majority, dev_records=200, chance=0.5):
    return {"majority": majority, "majority_label": "true", "chance": chance, "dev_records": dev_records}


@pytest.mark.reliability
def test_a_task_where_full_never_beats_the_majority_class_gives_no_verdict(tmp_path):
    """a task where full fine-tuning never leaves the majority class (BoolQ at 64.0%) -> marked "no signal" beside its majority and chance scores, and no score or time verdict drawn from it"""
    from adapterlab.compare.report import markdown

    records = [record("full", s, [(1, 0.70), (4, 0.85)]) for s in (0, 1)]
    records += [record("lora", s, [(2, 0.70), (6, 0.845)]) for s in (0, 1)]
    records += [record("full", s, [(5, 0.64), (9, 0.64)], task="boolq") for s in (0, 1)]
    records += [record("lora", s, [(1, 0.64), (2, 0.64)], task="boolq") for s in (0, 1)]
    settings = {"model": "tiny", "seeds": [0, 1], "baselines": {"sst2": baseline(0.51), "boolq": baseline(0.64)}}
    result = analyse(records, [0.99], settings)
    assert result["baselines"]["boolq"]["signal"] is False and result["baselines"]["sst2"]["signal"] is True
    verdict = result["verdicts"]["lora"]
    assert "(median over 1 task(s))" in verdict and "in 2/2 runs" in verdict  # sst2's two runs alone
    assert "1.50x full's training time" in verdict and "faster" not in verdict  # boolq's 0.2x is left out
    assert "no verdict from boolq (no signal" in verdict
    report = markdown(result)
    assert "## boolq (targets: 99% = 63.4) - no signal" in report and "## sst2 (targets: 99% = 84.2)\n" in report
    assert "majority class ('true' from training) 64.0, chance 50.0 (200 dev records). **No signal**" in report


def test_full_must_clear_the_majority_class_by_two_standard_errors():
    """A best-of-evaluations score a point above the majority class on 200 records is noise, not learning."""
    from adapterlab.compare.baselines import task_signal

    summary = [{"method": "full", "task": t, "best_dev": {"mean": m}} for t, m in (("piqa", 0.52), ("arc", 0.60))]
    signals = task_signal(summary, {"piqa": baseline(0.51), "arc": baseline(0.51)}, {})
    assert signals["piqa"]["margin"] == pytest.approx(2 * (0.51 * 0.49 / 200) ** 0.5)
    assert (signals["piqa"]["signal"], signals["arc"]["signal"]) == (False, True)
    other_metric = task_signal(summary, {"piqa": baseline(0.51)}, {"piqa": "eval_f1"})
    assert other_metric["piqa"]["signal"] is None  # a majority-class accuracy says nothing about F1


def test_majority_class_comes_from_training_labels_and_is_scored_on_dev(tmp_path):
    from adapterlab.compare.baselines import task_baselines
    from adapterlab.compare.tasks import CompareTask

    train = tmp_path / "train.tsv"
    train.write_text("label\tsentence\n" + "".join(f"{label}\tfilm {i}\n" for i, label in enumerate("1110101011")))
    dev = tmp_path / "dev.tsv"
    dev.write_text("label\tsentence\n" + "".join(f"{label}\tfilm {i}\n" for i, label in enumerate("10100")))
    got = task_baselines(CompareTask("t", "seq-cls", train, dev))
    assert got == {"majority": 0.4, "majority_label": "1", "chance": 0.5, "dev_records": 5}
    questions = [{"question": "q", "choices": list("abc" if i % 2 else "ab"), "label": gold}
                 for i, gold in enumerate("ABBBA")]
    choice_train, choice_dev = write_json(tmp_path / "mc.json", questions), write_json(tmp_path / "mcdev.json",
                                                                                        questions[:2])
    got = task_baselines(CompareTask("m", "multiple-choice", choice_train, choice_dev))
    assert (got["majority"], got["majority_label"]) == (0.5, "1")  # gold B (index 1) is the most frequent
    assert got["chance"] == pytest.approx((1 / 2 + 1 / 3) / 2)  # mean of 1 / choices over dev questions


@pytest.mark.reliability
def test_curves_draw_a_labelled_majority_line_and_do_not_zoom_a_flat_line():
    """curves.png of a task whose runs sit flat at the majority class -> the majority and target lines are drawn and labelled, and the score axis runs from below chance to 100 (a flat line stays flat)"""
    import matplotlib.pyplot as plt

    from adapterlab.compare.report import curves_figure

    records = [record(m, 0, [(1, 0.64), (2, 0.64), (3, 0.64)], task="boolq") for m in ("full", "lora")]
    result = analyse(records, [0.99, 0.95], {"baselines": {"boolq": baseline(0.64)}})
    fig = curves_figure(result)
    try:
        ax = fig.axes[0]
        labels = {line.get_label(): line for line in ax.get_lines()}
        assert labels["majority class (64.0)"].get_ydata()[0] == pytest.approx(64.0)
        assert {"99% of full's best (63.4)", "95% of full's best (60.8)", "full", "lora"} <= set(labels)
        assert "majority class (64.0)" in [t.get_text() for t in ax.get_legend().get_texts()]
        assert ax.get_ylim() == (45.0, 100.0)  # chance 50 - 5 to 100, not 60.8-64.0
        assert ax.get_title() == "boolq (no signal)"
    finally:
        plt.close(fig)


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
    assert set(latency["lora"]["b1"]["repeats"]) == {"full", "unmerged", "merged"}  # timed side by side
    assert len(latency["lora"]["b1"]["repeats"]["full"]) == 7 and set(latency["full"]["b1"]["repeats"]) == {"unmerged"}
    saved = json.loads((out / "results.json").read_text())
    assert {task: b["dev_records"] for task, b in saved["baselines"].items()} == {"data": 16, "other": 8}
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
    assert serving["lora"]["mixed"]["examples_per_s"] > 0  # and in mixed batches, beside switching
    assert "Serving every task at once" in (out / "report.md").read_text()
    assert "| lora | mixed batches (" in (out / "report.md").read_text()


@pytest.mark.slow
def test_fusion_fuses_the_other_tasks_pfeiffer_adapters_of_its_seed(tmp_path):
    model = encoder_folder(tmp_path / "bert")
    tasks = [str(write_sst(tmp_path / f"{name}.tsv", 24, seed=i)) for i, name in enumerate(("one", "two", "three"))]
    result = compare(str(model), tasks, ["full", "pfeiffer", "fusion"], str(tmp_path / "out"), seeds=1,
                     max_steps=2, eval_steps=1, patience=10, batch_size=4, cutoff_len=16, isolate=False,
                     options={"pfeiffer": {"size": 4}})
    runs = tmp_path / "out" / "runs"
    fused = {r["task"]: r for r in result["records"] if r["method"] == "fusion"}
    assert set(fused) == {"one", "two", "three"} and not result["refused"]
    saved = json.loads((runs / "one" / "fusion-seed0" / "adapter_config.json").read_text())
    assert saved["adapters"] == [f"two_pfeiffer={runs / 'two' / 'pfeiffer-seed0'}",
                                 f"three_pfeiffer={runs / 'three' / 'pfeiffer-seed0'}"]
    d, layers, labels = 32, 2, 2
    assert fused["one"]["trainable_parameters"] == layers * (3 * d * d + 2 * d) + d * labels + labels
    stored = sum(f.stat().st_size for f in (runs / "one" / "fusion-seed0").glob("*.safetensors"))
    assert fused["one"]["stored_bytes"] == stored  # fusion weights and head; the members are pfeiffer's
    assert fused["one"]["latency"]["b1"]["unmerged_ms"] > 0 and fused["one"]["latency"]["b1"]["merged_ms"] is None
    assert fused["one"]["curve"] and any(s["method"] == "fusion" for s in result["summary"])
    serving = {row["method"]: row for row in result["serving"]}
    assert serving["fusion"]["examples_per_s"] > 0 and serving["fusion"]["tasks"] == 3
    assert serving["fusion"]["parameter_mb"] >= serving["pfeiffer"]["parameter_mb"]  # members too (0.1 MB rounding)
    assert serving["fusion"]["mixed"]["examples_per_s"] > 0


def test_fusion_members_all_fuses_every_tasks_adapter_its_own_included(tmp_path):
    """--option fusion.members=all: AdapterFusion's usual setup (and xnli_fuse.py's), the task's own adapter among
    the members; the default fuses the other tasks' only. The compare-level key does not reach the fusion config."""
    from adapterlab.compare.fusion import check_fusion, fusion_options

    runs = tmp_path / "runs"
    tasks = ["one", "two", "three"]
    others = fusion_options("one", tasks, 1, runs, {"dropout": 0.0})
    every = fusion_options("one", tasks, 1, runs, {"dropout": 0.0, "members": "all"})
    assert others == {"dropout": 0.0, "adapters": [f"{t}_pfeiffer={runs / t / 'pfeiffer-seed1'}" for t in tasks[1:]]}
    assert every == {"dropout": 0.0, "adapters": [f"{t}_pfeiffer={runs / t / 'pfeiffer-seed1'}" for t in tasks]}
    check_fusion(["pfeiffer", "fusion"], ["one"], {"fusion": {"members": "all"}})  # one task: its own adapter


@pytest.mark.parametrize("argv, message", [
    (["--methods", "full,lora,nope"], "unknown ['nope']"),
    (["--methods", "full,multitask-full"], "multitask-full"),
    (["--methods", "full,lora", "--lr", "ia3=1e-3"], "--lr was given for ['ia3']"),
    (["--tasks", "no-such-task"], "neither a known task"),
    (["--targets", "1.5"], "--targets"),
    (["--seeds", "0"], "--seeds must be a positive integer"),
    (["--methods", "full,fusion"], "add pfeiffer to --methods"),
    (["--methods", "pfeiffer,fusion"], "give two or more --tasks (got 1)"),
    (["--methods", "pfeiffer,fusion", "--tasks", "sst2,boolq", "--option", "fusion.adapters=a"],
     "compare names the adapters it fuses"),
    (["--methods", "pfeiffer,fusion", "--option", "fusion.members=own"], "choose others"),
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


# ---------------------------------------------------------------- the comparison folder


def tiny_compare(tmp_path, *extra):
    """argv of a seconds-long comparison (one task, one seed, two steps) into tmp_path/out."""
    model = tmp_path / "bert"
    if not model.is_dir():
        encoder_folder(model)
    data = tmp_path / "data.tsv"
    if not data.is_file():
        write_sst(data, 24)
    return ["compare", "--model", str(model), "--tasks", str(data), "--seeds", "1", "--max-steps", "2",
            "--eval-steps", "1", "--batch-size", "4", "--cutoff-len", "16", "--no-latency", "--no-isolate",
            "--output", str(tmp_path / "out"), *extra]


def rows(out):
    return sorted((r["method"], r["seed"]) for r in json.loads((out / "results.json").read_text())["records"])


@pytest.mark.reliability
def test_a_second_comparison_into_a_folder_in_use_is_refused_naming_the_holder(tmp_path, capsys):
    """two compare runs into one --output at once -> the second exits 2 naming the holder's PID, writing nothing"""
    import os

    from adapterlab.folder_lock import claim_run_folder

    argv = tiny_compare(tmp_path, "--methods", "lora")
    capsys.readouterr()
    with claim_run_folder(tmp_path / "out"):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"in use by another adapterlab run (PID {os.getpid()})" in err and err.count("\n") == 1
        assert [p.name for p in (tmp_path / "out").iterdir()] == [".adapterlab.lock"]


@pytest.mark.reliability
def test_a_comparison_into_an_earlier_ones_folder_is_refused_resumed_or_replaced(tmp_path, capsys):
    """compare with other methods into an earlier comparison's --output -> refused, its results kept; with
    --resume the new rows join the old (report rebuilt from all); with --overwrite it starts afresh"""
    out = tmp_path / "out"
    assert main(tiny_compare(tmp_path, "--methods", "lora")) == 0
    before = (out / "results.json").read_text()
    capsys.readouterr()
    assert main(tiny_compare(tmp_path, "--methods", "ia3")) == 2
    err = capsys.readouterr().err
    assert "holds the outputs of an earlier adapterlab compare; pass --resume" in err and err.count("\n") == 1
    assert (out / "results.json").read_text() == before
    assert main(tiny_compare(tmp_path, "--methods", "ia3", "--resume")) == 0
    assert rows(out) == [("ia3", 0), ("lora", 0)]
    report = (out / "report.md").read_text()
    assert "lora" in report and "ia3" in report
    assert json.loads((out / "results.json").read_text())["settings"]["methods"] == ["lora", "ia3"]
    assert main(tiny_compare(tmp_path, "--methods", "lora", "--max-steps", "3", "--resume")) == 2
    assert "other settings (max_steps differ)" in capsys.readouterr().err
    (out / "mine.txt").write_text("kept")
    assert main(tiny_compare(tmp_path, "--methods", "lora", "--overwrite")) == 0
    assert rows(out) == [("lora", 0)] and not (out / "runs" / "data" / "ia3-seed0").exists()
    assert (out / "mine.txt").read_text() == "kept"


@pytest.mark.reliability
def test_compare_reuses_a_finished_run_it_did_not_start_and_refuses_one_of_other_settings(tmp_path, capsys):
    """a finished run already at OUTPUT/runs/<task>/<method>-seed<k> -> reused when its settings match (not
    retrained), refused naming the run and the setting when they differ, never deleted"""
    out = tmp_path / "out"
    assert main(tiny_compare(tmp_path, "--methods", "lora")) == 0
    run = out / "runs" / "data" / "lora-seed0"
    for name in ("data", "results.json", "results.csv", "report.md", "curves.png", ".adapterlab-compare.json"):
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()  # what is left: a run compare did not start
    files = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    capsys.readouterr()
    assert main(tiny_compare(tmp_path, "--methods", "lora", "--max-steps", "3", "--overwrite")) == 2
    err = capsys.readouterr().err
    assert f"{run} holds a run compare did not start, made with other settings (max_steps" in err
    assert err.count("\n") == 1 and not (out / "results.json").exists()
    assert main(tiny_compare(tmp_path, "--methods", "lora", "--overwrite")) == 0
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == files  # reused, not retrained
    record = json.loads((out / "results.json").read_text())["records"][0]
    assert record["steps"] == 2 and [p["step"] for p in record["curve"]] == [1, 2]
    assert main(tiny_compare(tmp_path, "--methods", "ia3", "--overwrite")) == 0
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == files  # --overwrite left it alone


@pytest.mark.reliability
def test_a_comparison_where_every_run_is_refused_exits_2_and_names_only_files_it_wrote(tmp_path, capsys):
    """compare where every run is refused -> exit 2 with one line naming the refusal; curves.png neither
    written nor claimed"""
    argv = tiny_compare(tmp_path, "--methods", "lora", "--option", "lora.targets=nowhere")
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    last = captured.err.strip().splitlines()[-1]  # (model loading draws progress bars on stderr before it)
    assert last.startswith("adapterlab compare: error: nothing could be compared: every run was refused (e.g. "
                           "lora on data: Target 'nowhere'") and last.endswith("fit each other.")
    assert "curves.png" not in captured.out and not (tmp_path / "out" / "curves.png").exists()


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


def test_a_finished_run_is_reused_whichever_way_output_is_spelled(tmp_path, monkeypatch):
    """--output given relative once and absolute the next time names the same runs: a finished run is reused."""
    monkeypatch.chdir(tmp_path)
    relative = [a if a != str(tmp_path / "out") else "out" for a in tiny_compare(tmp_path, "--methods", "lora")]
    assert main(relative) == 0
    run = tmp_path / "out" / "runs" / "data" / "lora-seed0"
    for name in ("data", "results.json", "results.csv", "report.md", "curves.png", ".adapterlab-compare.json"):
        path = tmp_path / "out" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    files = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert main(tiny_compare(tmp_path, "--methods", "lora", "--overwrite")) == 0
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == files
