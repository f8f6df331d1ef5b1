"""adapterlab measure: every field present and sane, merged latency only where merging applies, files agree."""

from __future__ import annotations

import csv
import functools
import json

import pytest

from adapterlab.cli import main
from adapterlab.commands.measure import parse_options
from adapterlab.measure import COLUMNS, measure
from tiny_models import tiny_model

METHODS = ["full", "lora", "series", "prefix"]
SHAPE = dict(seq_len=8, micro_batch_size=2, steps=1, warmup=0, decode_tokens=2, device="cpu", threads=1, progress=False)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("measure")
    rows = measure(functools.partial(tiny_model, "llama"), METHODS, options={"lora": {"r": 4, "targets": ["q", "v"]}},
                   isolate=False, output=out, **SHAPE)
    return rows, out


def test_every_method_has_every_field_with_sane_values(measured):
    rows, _ = measured
    assert [r["method"] for r in rows] == METHODS
    for row in rows:
        assert set(COLUMNS) <= set(row)
        assert row["step_time_ms"] > 0 and row["prefill_ms"] > 0
        assert row["decode_ms_per_token"] is None or row["decode_ms_per_token"] > 0
        if row["method"] == "full":
            assert row["trainable_params"] == row["total_params"]
            assert row["step_time_vs_full_pct"] == 100.0
        else:
            assert 0 < row["trainable_params"] < row["total_params"]
    by = {r["method"]: r for r in rows}
    assert by["lora"]["options"] == {"r": 4, "targets": ["q", "v"]}
    # LoRA r=4 on q and v of 2 layers of hidden 32 (k/v project to 16): 2 * (4*(32+32) + 4*(32+16))
    assert by["lora"]["trainable_params"] == 2 * (4 * 64 + 4 * 48)
    assert by["full"]["total_params"] == by["series"]["total_params"] - by["series"]["trainable_params"]


def test_merged_latency_only_for_mergeable_methods(measured):
    rows, _ = measured
    for row in rows:
        merged = row["merged_prefill_ms"] is not None
        assert merged == (row["method"] == "lora"), row["method"]
        if not merged:  # (a merged decode time may also be None: too small to tell from noise)
            assert row["merged_decode_ms_per_token"] is None


def test_csv_and_markdown_agree_with_json(measured):
    rows, out = measured
    summary = json.loads((out / "results.json").read_text())
    assert summary["results"] == rows
    assert summary["settings"]["seq_len"] == 8 and summary["isolated"] is False
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == METHODS
    for line, row in zip(table, rows):
        assert int(line["trainable_params"]) == row["trainable_params"]
        assert float(line["step_time_ms"]) == row["step_time_ms"]
        assert (line["merged_prefill_ms"] == "") == (row["merged_prefill_ms"] is None)
        assert json.loads(line["options"]) == row["options"]
    markdown = (out / "results.md").read_text()
    for row in rows:
        assert f"| {row['method']} | {row['trainable_params']:,} |" in markdown
        assert f"{row['step_time_ms']:,.1f} ({row['step_time_vs_full_pct']:.0f}%)" in markdown
    assert (out / "costs.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_method_or_option_fails_before_any_work():
    def factory():
        raise AssertionError("the model must not be built")

    with pytest.raises(ValueError, match="Unknown method.*'lorra'.*choose from"):
        measure(factory, ["full", "lorra"], **SHAPE)
    with pytest.raises(ValueError, match="not among the methods"):
        measure(factory, ["full"], options={"lora": {"r": 4}}, **SHAPE)
    with pytest.raises(Exception, match="rank"):
        measure(factory, ["lora"], options={"lora": {"rank": 4}}, **SHAPE)


def test_cli_reports_a_bad_method_and_parses_options(capsys, tmp_path):
    assert main(["measure", "--model", "x", "--methods", "full,nope", "--output", str(tmp_path)]) == 2
    assert "Unknown method" in capsys.readouterr().err
    assert parse_options(["lora.r=32", "lora.targets=q,k,v", "prompt.num-virtual-tokens=5"]) == {
        "lora": {"r": 32, "targets": ["q", "k", "v"]}, "prompt": {"num_virtual_tokens": 5}}
    with pytest.raises(ValueError, match="METHOD.KEY=VALUE"):
        parse_options(["r=32"])


@pytest.mark.slow
def test_isolated_runs_measure_each_method_in_a_fresh_process(tmp_path):
    rows = measure(functools.partial(tiny_model, "llama"), ["full", "lora"], isolate=True, output=tmp_path, **SHAPE)
    assert [r["method"] for r in rows] == ["full", "lora"]
    assert rows[1]["merged_prefill_ms"] is not None
    assert all(r["peak_memory_mb"] is None or r["peak_memory_mb"] > 0 for r in rows)
    assert json.loads((tmp_path / "results.json").read_text())["isolated"] is True


def test_a_refusing_method_is_a_row_and_the_others_are_kept(tmp_path):
    """The conformer refuses causal models (it would see the future): its row says so, the others are measured."""
    model = functools.partial(tiny_model, "llama")
    rows = measure(model, ["full", "conformer", "lora"], isolate=False, output=tmp_path, **SHAPE)
    by = {r["method"]: r for r in rows}
    assert by["conformer"]["status"] == "refused" and "see the future" in by["conformer"]["note"]
    assert by["conformer"]["step_time_ms"] is None and by["conformer"]["trainable_params"] is None
    assert by["full"]["status"] == by["lora"]["status"] == "ok" and by["lora"]["step_time_ms"] > 0
    summary = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in summary["results"]] == ["full", "conformer", "lora"]
    with (tmp_path / "results.csv").open() as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["ok", "refused", "ok"]
    assert "| conformer | refused" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "costs.png").is_file()
