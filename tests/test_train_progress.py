"""What training prints: one readable line per logging step beside the progress bar, not the Trainer's raw dicts."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

from adapterlab.train import TrainConfig, train
from adapterlab.train.progress import ReadableProgress, duration
from train_helpers import causal_folder, math_records, write_json


def test_training_prints_one_readable_line_per_logging_step(tmp_path, capsys, single_thread):
    model = causal_folder(tmp_path / "llama")
    data = write_json(tmp_path / "math.json", math_records(16))
    out = tmp_path / "run"
    train(TrainConfig(model=str(model), data=[str(data)], output=str(out), adapter="lora",
                      adapter_options={"r": 4, "targets": ["q", "v"]}, max_steps=4, batch_size=4, micro_batch_size=4,
                      warmup_steps=2, lr=1e-2, logging_steps=1, save_steps=4, val_size=4, eval_steps=2))
    text = capsys.readouterr()
    shown = text.out + text.err
    assert "{'loss'" not in shown and "'learning_rate'" not in shown, shown  # no raw dicts
    steps = re.findall(r"^step (\d)/4  loss (\d+\.\d{4})  lr (\S+).*?  ([\d,.]+ tokens/s)  (\S+( \S+)?) left$",
                       shown, re.M)
    assert [s[0] for s in steps] == ["1", "2", "3", "4"], shown
    assert all(float(s[2].split()[0]) >= 0 for s in steps)
    assert re.search(r"^step 2/4  dev  loss \d+\.\d{4}", shown, re.M), shown
    assert re.search(r"^step 4/4  done in \d+s, mean loss \d+\.\d{4}$", shown, re.M), shown
    # metrics.jsonl keeps the numbers as the Trainer logged them
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(isinstance(r["learning_rate"], float) for r in records if "learning_rate" in r)


def state(step: int, tokens: int = 0) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, max_steps=80, num_input_tokens_seen=tokens, is_world_process_zero=True)


def test_the_line_reads_as_a_person_would_write_it(monkeypatch):
    args = SimpleNamespace(warmup_steps=5, train_batch_size=8, gradient_accumulation_steps=1, world_size=1)
    progress = ReadableProgress(bar=False)
    now = [100.0]
    monkeypatch.setattr("adapterlab.train.progress.time.perf_counter", lambda: now[0])
    progress.on_train_begin(args, state(0), None)
    now[0] = 110.0
    assert progress.line(args, state(1), {"loss": 2.34567, "learning_rate": 0.0, "grad_norm": 3.0}) == \
        "step 1/80  loss 2.3457  lr 0 (warmup starts at 0)  0.8 examples/s  13m 10s left"
    now[0] = 120.0
    assert progress.line(args, state(40, 6120), {"loss": 1.0, "learning_rate": 8e-4, "train_runtime": 20.0}) == \
        "step 40/80  loss 1.0000  lr 8.00e-04  306 tokens/s  20s left"
    assert progress.line(args, state(80), {"train_loss": 1.5, "train_runtime": 185.0}) == \
        "step 80/80  done in 3m 05s, mean loss 1.5000"
    assert duration(3725) == "1h 02m" and duration(65) == "1m 05s" and duration(4.4) == "4s"
