"""The training run folder under faults: what --overwrite removes, model folders, locks, damaged checkpoints."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import transformers as T

from adapterlab.models import load_model
from adapterlab.cli import build_parser, main
from adapterlab.commands.train import config_from_args
from adapterlab.errors import CorruptFileError, RunFolderError
from adapterlab.train import TrainConfig, train
from adapterlab.train import checkpointing, run_dir
from train_helpers import causal_folder, math_records, write_json

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return causal_folder(tmp_path_factory.mktemp("llama"))


@pytest.fixture()
def math_file(tmp_path) -> Path:
    return write_json(tmp_path / "math.json", math_records(16))


def config(model: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(model=str(model), data=[str(data)], output=str(out), adapter="lora",
                    adapter_options={"r": 2, "targets": ["q"]}, max_steps=2, batch_size=2, micro_batch_size=2,
                    warmup_steps=0, lr=1e-2, logging_steps=1, save_steps=1)
    return TrainConfig(**{**settings, **overrides})


def argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--output", str(out), "--adapter", "lora",
            "--r", "2", "--targets", "q", "--max-steps", "2", "--batch-size", "2", "--micro-batch-size", "2",
            "--warmup-steps", "0", "--save-steps", "1", "--lr", "1e-2", "--logging-steps", "1", *extra]


def cli_config(*args: str) -> TrainConfig:
    """The TrainConfig `adapterlab train ARGS` runs with (so the CLI may resume a run made in Python)."""
    return config_from_args(build_parser().parse_args(argv(*args)))


def one_line(capsys) -> str:
    """The error line (progress bars of model loading may precede it), with no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("adapterlab train:")]
    assert len(lines) == 1 and lines[0].startswith("adapterlab train: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.reliability
@pytest.mark.parametrize("version", ["this", "earlier"])
def test_overwrite_removes_every_output_of_the_previous_run_and_only_those(llama, math_file, tmp_path, version):
    """--overwrite over a full fine-tuning run -> its config.json and model.safetensors go, the user's own files stay"""
    out = tmp_path / "run"
    train(config(llama, math_file, out, adapter="full", adapter_options={}, max_steps=1))
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    if version == "earlier":  # runs of earlier versions kept no manifest
        (out / run_dir.MANIFEST).unlink()
    (out / "notes.txt").write_text("my notes")
    train(config(llama, math_file, out, overwrite=True))
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "adapter.safetensors").is_file() and sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "checkpoint-1", "checkpoint-2"]
    written = json.loads((out / run_dir.MANIFEST).read_text())["written"]
    assert "notes.txt" not in written and {"adapter.safetensors", "tokenizer.json", "train_config.yaml"} <= set(written)


@pytest.mark.reliability
@pytest.mark.parametrize("where", ["the model folder", "inside it", "its parent"])
def test_output_in_the_model_folder_is_refused(llama, math_file, tmp_path, where):
    """--output that is, lies inside or contains the --model folder -> RunFolderError; the model folder is untouched"""
    model = tmp_path / "base"
    shutil.copytree(llama, model)
    before = sorted(p.name for p in model.rglob("*"))
    out = {"the model folder": model, "inside it": model / "run", "its parent": tmp_path}[where]
    for overwrite in (False, True):
        with pytest.raises(RunFolderError, match=f"--output {out} .*the folder of --model"):
            train(config(model, math_file, out, adapter="full", adapter_options={}, overwrite=overwrite))
    assert sorted(p.name for p in model.rglob("*")) == before


@pytest.mark.reliability
def test_output_in_a_short_names_cache_folder_is_refused(math_file, tmp_path, monkeypatch):
    """--output inside the cache folder of a short name (smollm2-135m) -> RunFolderError, nothing pulled or written"""
    from adapterlab.models import model_dir

    monkeypatch.setenv("ADAPTERLAB_HOME", str(tmp_path / "home"))
    out = model_dir("smollm2-135m")
    with pytest.raises(RunFolderError, match="the folder of --model smollm2-135m"):
        train(config(Path("smollm2-135m"), math_file, out))
    assert not (tmp_path / "home").exists()


@pytest.mark.reliability
def test_output_holding_a_model_no_run_wrote_is_refused(llama, math_file, tmp_path):
    """--output holding model files no run wrote (config.json, model.safetensors) -> RunFolderError, even with --overwrite"""
    out = tmp_path / "someone's model"
    shutil.copytree(llama, out)
    for overwrite in (False, True):
        with pytest.raises(RunFolderError, match="holds model files that no adapterlab run wrote .*config.json"):
            train(config(llama, math_file, out, overwrite=overwrite))
    assert not (out / run_dir.MANIFEST).exists()


@pytest.mark.reliability
def test_edited_manifest_cannot_reach_outside_the_run_folder(tmp_path):
    """run manifest naming ../victim or an absolute path -> --overwrite deletes nothing outside the run folder"""
    out, victim = tmp_path / "run", tmp_path / "victim"
    out.mkdir()
    victim.mkdir()
    (out / "summary.json").write_text("{}")
    (out / run_dir.MANIFEST).write_text(json.dumps({"written": ["../victim", str(victim), "summary.json", 3]}))
    run_dir.clear_run(out)
    assert victim.is_dir() and not (out / "summary.json").exists()


HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from adapterlab.folder_lock import claim_run_folder
    with claim_run_folder(Path(sys.argv[1])):
        print("holding", flush=True)
        time.sleep(600)
""")


@pytest.mark.reliability
def test_second_run_into_a_folder_in_use_is_refused_until_the_first_dies(llama, math_file, tmp_path):
    """two runs started into one folder -> the second gets RunFolderError naming the folder and the holder's PID; kill -9 frees it"""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "holding"
        for resume in (False, True):
            with pytest.raises(RunFolderError, match=f"{out} is in use by another adapterlab run \\(PID {holder.pid}\\)"):
                train(config(llama, math_file, out, resume=resume))
        assert sorted(p.name for p in out.iterdir()) == [".adapterlab.lock"]  # the refused run wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    train(config(llama, math_file, out))
    assert not (out / ".adapterlab.lock").exists()


@pytest.mark.reliability
def test_output_that_is_a_file_is_a_one_line_error(llama, math_file, tmp_path, capsys):
    """--output naming a file -> one-line error naming it"""
    out = tmp_path / "run.txt"
    out.write_text("not a folder")
    assert main(argv(llama, math_file, out)) == 2
    assert f"--output {out} is a file" in one_line(capsys)


@pytest.mark.reliability
def test_read_only_output_is_a_one_line_error_and_leaves_nothing(llama, math_file, tmp_path, capsys, monkeypatch):
    """read-only --output folder (EROFS on the first write) -> one-line error naming the file; no folder left behind"""
    out = tmp_path / "new" / "run"
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(out)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    assert main(argv(llama, math_file, out)) == 2
    line = one_line(capsys)
    assert f"Read-only file system: {out / '.adapterlab.lock'}" in line and "writable" in line
    assert not (tmp_path / "new").exists()


@pytest.mark.reliability
def test_full_disk_during_a_checkpoint_keeps_the_previous_one(llama, math_file, tmp_path, monkeypatch, capsys):
    """disk full while writing checkpoint-2 -> one-line error naming the file; no partial checkpoint-2; --resume continues from checkpoint-1"""
    out = tmp_path / "run"
    real, calls = checkpointing.write_safetensors, []

    def full_on_second(path, state, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, state, metadata)

    monkeypatch.setattr(checkpointing, "write_safetensors", full_on_second)
    assert main(argv(llama, math_file, out)) == 2
    line = one_line(capsys)
    assert "No space left on device" in line and "checkpoint-2/trainable.safetensors" in line and "free disk" in line
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-1"]
    summary = train(cli_config(llama, math_file, out, "--resume"))
    assert summary["resumed_from"].endswith("checkpoint-1") and summary["steps"] == 2


@pytest.mark.reliability
def test_overwrite_never_deletes_through_a_symlink(llama, math_file, tmp_path):
    """--overwrite with checkpoints/ a symlink -> RunFolderError before anything is deleted; the link's target is kept"""
    out = tmp_path / "run"
    train(config(llama, math_file, out))
    elsewhere = tmp_path / "big-disk"
    (out / "checkpoints").rename(elsewhere)
    (out / "checkpoints").symlink_to(elsewhere)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(RunFolderError, match=f"{out / 'checkpoints'} is a symbolic link .*never deletes through links"):
        train(config(llama, math_file, out, overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in elsewhere.iterdir()) == ["checkpoint-1", "checkpoint-2"]


@pytest.mark.reliability
def test_torn_trainer_state_and_metrics_line_fall_back_on_resume(llama, math_file, tmp_path):
    """torn trainer_state.json and a torn metrics.jsonl line -> --resume warns naming each file and continues from the checkpoint before"""
    out = tmp_path / "run"
    train(config(llama, math_file, out, max_steps=3))
    state = out / "checkpoints" / "checkpoint-3" / "trainer_state.json"
    state.write_text(state.read_text()[:50])
    metrics = out / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 3, "loss"')
    with pytest.warns(UserWarning) as warned:
        summary = train(config(llama, math_file, out, max_steps=3, resume=True))
    messages = [str(w.message) for w in warned]
    assert any(str(state) in m and "torn" in m for m in messages)
    assert any(str(metrics) in m and "torn line" in m for m in messages)
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] == 3
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"loss"' in line] == [1, 2, 3]


@pytest.mark.reliability
@pytest.mark.parametrize("name", ["optimizer.pt", "trainable.safetensors"])
def test_damaged_checkpoint_file_on_resume_is_a_one_line_error(llama, math_file, tmp_path, capsys, name):
    """truncated optimizer.pt or trainable.safetensors in the checkpoint --resume picks -> one-line error naming it"""
    out = tmp_path / "run"
    train(cli_config(llama, math_file, out))
    shutil.rmtree(out / "checkpoints" / "checkpoint-2")
    damaged = out / "checkpoints" / "checkpoint-1" / name
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert main(argv(llama, math_file, out, "--resume")) == 2
    line = one_line(capsys)
    assert str(damaged) in line and "delete the folder" in line and "--overwrite" in line
    with pytest.raises(CorruptFileError):
        train(cli_config(llama, math_file, out, "--resume"))


def test_full_run_folder_loads_as_a_model(llama, math_file, tmp_path):
    """The outputs of a full fine-tuning run, swapped in as one group, form a loadable model folder."""
    out = tmp_path / "run"
    train(config(llama, math_file, out, adapter="full", adapter_options={}, max_steps=1))
    model, _ = load_model(str(out), log=lambda _: None)
    assert isinstance(model, T.LlamaForCausalLM) and not (out / ".adapterlab-pending").exists()


@pytest.mark.reliability
def test_run_config_saved_before_a_setting_existed_still_matches():
    """run_config.yaml saved before --freq-mask/--time-mask existed -> the missing settings count as their defaults"""
    settings = dict(model="m", data=["d"], output="o", task="audio-cls")
    saved = TrainConfig(**settings).run_settings()
    del saved["freq_mask"], saved["time_mask"]
    assert run_dir.differences(saved, TrainConfig(**settings)) == []
    assert run_dir.differences(saved, TrainConfig(**settings, time_mask=8)) == ["time_mask"]
