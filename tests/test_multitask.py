"""Multi-task full fine-tuning (Mundra et al. 2023): one encoder shared by one head per task, task batches drawn in
proportion to task size and reproducibly per seed, early stopping over all tasks, and `multitask-full` /
`--extend` in `adapterlab compare` beside full fine-tuning and the adapters."""

from __future__ import annotations

import csv
import random
from collections import Counter

import pytest
import torch
from train_helpers import WORDS, encoder_folder, write_sst

from adapterlab.cli import main
from adapterlab.compare import analyse, compare
from adapterlab.train import TrainConfig
from adapterlab.train.multitask import ProportionalTaskBatches
from adapterlab.train.multitask_recipe import TaskPatience, build_multitask, train_multitask


def write_topic(path, n, seed=1):
    """A second text task with other (three) labels: what the sentence is about."""
    rng = random.Random(seed)
    cue = {"day": "monday", "fruit": "apples", "kid": "kids"}
    lines = ["label\tsentence"]
    for _ in range(n):
        label = rng.choice(sorted(cue))
        lines.append(f"{label}\tthe {cue[label]} {rng.choice(WORDS)} {rng.choice(WORDS)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def two_tasks(tmp_path, **settings):
    model = encoder_folder(tmp_path / "bert")
    common = dict(model=str(model), task="seq-cls", output=str(tmp_path / "run"), adapter="full", seed=0,
                  overwrite=True, batch_size=8, micro_batch_size=8, lr=1e-3, warmup_steps=1, cutoff_len=32,
                  val_size=0.25, **settings)
    return {"sst": TrainConfig(data=[str(write_sst(tmp_path / "sst.tsv", 48))], **common),
            "topic": TrainConfig(data=[str(write_topic(tmp_path / "topic.tsv", 32))], **common)}


def test_tasks_share_one_encoder_in_memory_with_one_head_each(tmp_path):
    model, _ = build_multitask(two_tasks(tmp_path, max_steps=1))
    sst, topic = model.tasks["sst"], model.tasks["topic"]
    assert sst.bert is topic.bert is model.encoder
    encoder = {id(p) for p in model.encoder.parameters()}
    assert {id(p) for p in topic.bert.parameters()} == encoder
    heads = {t: {id(p) for p in model.head_parameters(t).values()} for t in model.tasks}
    assert heads["sst"] and heads["topic"] and not heads["sst"] & heads["topic"] and not heads["sst"] & encoder
    assert {id(p) for p in model.parameters()} == encoder | heads["sst"] | heads["topic"]  # one copy of the encoder
    assert model.head_parameters("topic")["classifier.weight"].shape[0] == 3  # its own labels


def test_gradients_reach_the_shared_encoder_and_every_head(tmp_path):
    model, setups = build_multitask(two_tasks(tmp_path, max_steps=1))
    loss = sum(model(task=t, **s.data_collator(s.train_dataset[:4])).loss for t, s in setups.items())
    loss.backward()
    for name, param in [*model.encoder.named_parameters(), *(("head", p) for t in model.tasks
                                                              for p in model.head_parameters(t).values())]:
        if "token_type" in name:  # one segment: only row 0 is used
            continue
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_sampler_draws_tasks_in_proportion_to_size_and_reproducibly_per_seed():
    sampler = ProportionalTaskBatches([300, 100, 50], batch_size=10, seed=0)
    task_of = lambda batch: 0 if batch[0] < 300 else 1 if batch[0] < 400 else 2
    epoch = list(sampler)
    assert len(epoch) == len(sampler) == 45
    assert all(len({task_of([i]) for i in b}) == 1 for b in epoch)  # one task per batch
    assert sorted(i for b in epoch for i in b) == list(range(450))  # every example once per epoch
    draws = Counter(task_of(b) for _ in range(40) for b in list(sampler)[:15])  # first third of 40 epochs
    assert draws[0] / 600 == pytest.approx(30 / 45, abs=0.05) and draws[2] / 600 == pytest.approx(5 / 45, abs=0.03)
    again = ProportionalTaskBatches([300, 100, 50], batch_size=10, seed=0)
    assert list(again) == epoch and list(again) != epoch  # same seed, same first epoch; a new order each epoch
    assert list(ProportionalTaskBatches([300, 100, 50], batch_size=10, seed=1)) != epoch


def test_training_stops_only_when_no_task_improved_for_patience_evaluations():
    patience = TaskPatience({"a": True, "b": False}, patience=2)
    assert not patience.update({"a": 0.5, "b": 1.0})
    assert not patience.update({"a": 0.4, "b": 0.9})  # b (a loss) improved
    assert not patience.update({"a": 0.4, "b": 0.95})  # one miss
    assert patience.update({"a": 0.5, "b": 0.95})  # two misses: a only tied its best


def test_time_until_every_task_reached_a_mark_is_one_clock_for_multitask_and_a_sum_for_separate_runs():
    def record(method, task, curve, shared=None):
        points = [{"step": 10 * (i + 1), "train_time_s": t, "score": s} for i, (t, s) in enumerate(curve)]
        return {"method": method, "task": task, "seed": 0, "curve": points, "steps": 10 * len(curve),
                "trainable_parameters": 1, "stored_bytes": 1, "peak_rss_mb": 1.0,
                **({"shared_run": {"tasks": shared, "run": "r"}} if shared else {})}

    both = ["a", "b"]
    records = [record("full", "a", [(2, 0.8), (4, 0.9)]), record("full", "b", [(3, 0.5), (6, 0.7)]),
               record("multitask-full", "a", [(5, 0.9), (10, 0.9)], both),
               record("multitask-full", "b", [(5, 0.6), (10, 0.7)], both)]
    result = analyse(records, [0.99], {})
    every = {e["method"]: e for e in result["all_tasks"]}
    assert every["full"]["time_to_99%_s"]["mean"] == 4 + 6  # two runs, one after the other
    assert every["multitask-full"]["time_to_99%_s"]["mean"] == 10  # one run: until its last task got there
    assert "one run serves all 2 tasks: every task reached 99% after 10 s of its shared clock, 1.00x the sum " \
           "over full's 2 runs" in result["verdicts"]["multitask-full"]


def test_each_head_trains_and_the_run_folder_holds_one_encoder_and_the_heads(tmp_path):
    configs = two_tasks(tmp_path, max_steps=6, eval_steps=3, logging_steps=3)
    model, setups = build_multitask(configs)
    before = {t: {n: p.detach().clone() for n, p in model.head_parameters(t).items()} for t in model.tasks}
    summary = train_multitask(model, setups, configs["sst"], tmp_path / "run")
    for task, params in before.items():
        assert any(not torch.equal(p, model.head_parameters(task)[n]) for n, p in params.items()), task
    assert summary["task_batches_per_epoch"] == {"sst": 5, "topic": 3}  # 36 and 24 training rows, batch 8
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"shared-encoder.safetensors", "head-sst.safetensors", "head-topic.safetensors"} <= files
    encoder = (tmp_path / "run" / "shared-encoder.safetensors").stat().st_size
    head = (tmp_path / "run" / "head-topic.safetensors").stat().st_size
    assert summary["stored_bytes_per_task"]["topic"] == round(encoder / 2 + head)


@pytest.mark.slow
def test_a_tiny_comparison_runs_multitask_full_and_the_extension(tmp_path):
    model = encoder_folder(tmp_path / "bert")
    sst, topic = write_sst(tmp_path / "sst.tsv", 60), write_topic(tmp_path / "topic.tsv", 40)
    result = compare(str(model), [str(sst), str(topic)], ["full", "lora", "multitask-full"], str(tmp_path / "out"),
                     seeds=1, max_steps=6, eval_steps=2, patience=10, batch_size=8, cutoff_len=32, isolate=False,
                     latency=False, options={"lora": {"r": 2}}, lr={"lora": 1e-2, "full": 1e-3, "multitask-full": 1e-3},
                     extend="topic", replay=0.5)
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert sorted((r["method"], r["task"]) for r in rows if r["method"].startswith("multitask")) == [
        ("multitask-extend", "topic"), ("multitask-full", "sst"), ("multitask-full", "topic")]
    joint = [r for r in result["records"] if r["method"] == "multitask-full"]
    assert {r["task"] for r in joint} == {"sst", "topic"} and joint[0]["run"] == joint[1]["run"]
    for r in joint:
        assert [p["step"] for p in r["curve"]] == [2, 4, 6]
    assert [p["train_time_s"] for p in joint[0]["curve"]] == [p["train_time_s"] for p in joint[1]["curve"]]
    every = {e["method"]: e for e in result["all_tasks"]}
    assert every["multitask-full"]["one_run_for_all"] and not every["full"]["one_run_for_all"]
    assert every["multitask-full"]["time_to_best_s"]["mean"] == max(
        max(r["curve"], key=lambda p: p["score"])["train_time_s"] for r in joint)
    added = next(r for r in result["records"] if r["method"] == "multitask-extend")
    assert set(added["extension"]["old_tasks_dev"]) == {"sst"} and added["extension"]["replay"] == 0.5
    report = (tmp_path / "out" / "report.md").read_text()
    assert "serves all 2 tasks" in report and "## Adding a task: topic" in report and "| lora |" in report


@pytest.mark.reliability
def test_multitask_full_with_a_single_task_is_refused_in_one_line(tmp_path, capsys):
    """--methods multitask-full with one --tasks -> one-line error asking for two or more tasks, nothing run"""
    data = write_sst(tmp_path / "data.tsv", 10)
    argv = ["compare", "--model", "minilm-l6", "--tasks", str(data), "--methods", "full,multitask-full",
            "--output", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "two or more --tasks" in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.reliability
@pytest.mark.parametrize("extra, message", [
    (["--methods", "full,lora", "--extend", "nope"], "--extend 'nope'"),
    (["--methods", "full,multitask-full", "--extend", "b"], "add an adapter method"),
    (["--methods", "full,lora", "--replay", "0.2"], "--replay is the replay share of --extend"),
    (["--methods", "full,lora", "--extend", "b", "--replay", "0"], "--replay is the share"),
])
def test_bad_extension_requests_are_refused_in_one_line(extra, message, tmp_path, capsys):
    """--extend naming no task, without an adapter to compare, or a bad --replay -> one-line error, nothing run"""
    a, b = write_sst(tmp_path / "a.tsv", 10), write_topic(tmp_path / "b.tsv", 10)
    argv = ["compare", "--model", "minilm-l6", "--tasks", f"{a},{b}", "--output", str(tmp_path / "out"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "runs").exists()
