"""Saved adapter files under faults: interrupted saves, kills, full disks, damaged files, outside reads."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from tiny_models import output_of, randomize_adapters, tiny_inputs, tiny_model

import adapterlab as al
import adapterlab.files as files
from adapterlab.cli import describe_os_error
from adapterlab.errors import CorruptFileError
from adapterlab.train.checkpointing import load_head, save_head

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]


def lora(alpha: float, seed: int) -> torch.nn.Module:
    """A tiny llama with LoRA; the same shapes for every alpha, so a mix of files would load silently."""
    model = tiny_model("llama")
    al.attach(model, "lora", targets=["q", "v"], r=4, alpha=alpha)
    randomize_adapters(model, seed=seed)
    return model


def loaded_output(folder: Path) -> torch.Tensor:
    return output_of(al.load_adapter(tiny_model("llama"), folder), tiny_inputs("llama"))


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.reliability
def test_interrupted_save_leaves_the_old_or_the_new_adapter(tmp_path, monkeypatch):
    """save_adapter failing at each rename (a kill mid-save) -> the folder loads as the old adapter or the new one, never a mix"""
    x = tiny_inputs("llama")
    old, new = lora(alpha=8.0, seed=1), lora(alpha=16.0, seed=2)
    old_out, new_out = output_of(old, x), output_of(new, x)
    real_replace, real_rename = os.replace, os.rename
    step, outcomes = 1, set()
    while True:
        folder = tmp_path / f"fault-{step}"
        al.save_adapter(old, folder)
        calls = []

        def failing(real):
            def move(src, dst, *args, **kwargs):
                calls.append(dst)
                if len(calls) == step:
                    raise OSError(errno.EIO, "injected fault", str(dst))
                return real(src, dst, *args, **kwargs)
            return move

        monkeypatch.setattr(os, "replace", failing(real_replace))
        monkeypatch.setattr(os, "rename", failing(real_rename))
        try:
            al.save_adapter(new, folder)
            finished = True
        except OSError:
            finished = False
        monkeypatch.undo()
        got = loaded_output(folder)
        is_old, is_new = torch.equal(got, old_out), torch.equal(got, new_out)
        assert is_old or is_new, f"a fault at rename {step} left a mix of the two adapters"
        outcomes.add("new" if is_new else "old")
        al.save_adapter(new, folder)  # the next save finishes or replaces the interrupted one
        assert sorted(p.name for p in folder.iterdir()) == ["adapter.safetensors", "adapter_config.json"]
        torch.testing.assert_close(loaded_output(folder), new_out, rtol=0, atol=0)
        if finished:
            break
        step += 1
    assert outcomes == {"old", "new"} and step >= 4  # faults both before and after the commit point were tried


KILL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys
    import adapterlab as al
    from tiny_models import randomize_adapters, tiny_model
    model = tiny_model("llama")
    al.attach(model, "lora", targets=["q", "v"], r=4, alpha=16.0)
    randomize_adapters(model, seed=2)
    def kill_on_commit(src, dst):
        os.kill(os.getpid(), signal.SIGKILL)
    os.rename = kill_on_commit
    al.save_adapter(model, sys.argv[1])
""")


@pytest.mark.reliability
def test_kill_during_save_leaves_temporaries_that_the_next_save_sweeps(tmp_path):
    """SIGKILL during save_adapter -> the old adapter still loads; the next save removes the .*.tmp left behind"""
    old = lora(alpha=8.0, seed=1)
    al.save_adapter(old, tmp_path)
    script = tmp_path.parent / f"{tmp_path.name}-kill.py"
    script.write_text(KILL_DURING_SAVE)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    left = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert left, "the kill left the staging folder"
    torch.testing.assert_close(loaded_output(tmp_path), output_of(old, tiny_inputs("llama")), rtol=0, atol=0)
    (tmp_path / f".adapter.safetensors.{dead_pid()}.0123abcd.tmp").write_bytes(b"half")  # another kill's leftover
    (tmp_path / ".notes.tmp").write_text("mine")  # not our naming: kept
    (tmp_path / f".adapter.safetensors.{os.getppid()}.0123abcd.tmp").write_bytes(b"live")  # a live writer's: kept
    al.save_adapter(lora(alpha=16.0, seed=2), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == sorted(
        [".notes.tmp", f".adapter.safetensors.{os.getppid()}.0123abcd.tmp"])


@pytest.mark.reliability
@pytest.mark.parametrize("fault", ["OSError", "SafetensorError"])
def test_full_disk_during_save_keeps_the_old_adapter(tmp_path, monkeypatch, fault):
    """disk full while saving an adapter -> OSError naming the file (one CLI line); the old adapter still loads, no partial files"""
    old = lora(alpha=8.0, seed=1)
    al.save_adapter(old, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())

    def full_disk(state, path, metadata=None):
        Path(path).write_bytes(b"\0" * 10)  # a partial write first
        if fault == "OSError":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(files, "save_file", full_disk)
    with pytest.raises(OSError) as caught:
        al.save_adapter(lora(alpha=16.0, seed=2), tmp_path)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename.endswith("adapter.safetensors")
    message = describe_os_error(caught.value)
    assert "adapter.safetensors" in message and "free disk space" in message and "\n" not in message
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    torch.testing.assert_close(loaded_output(tmp_path), output_of(old, tiny_inputs("llama")), rtol=0, atol=0)


DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "not safetensors": lambda data: b"PK\x03\x04 this is a zip, not safetensors" * 4,
}


@pytest.mark.reliability
@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("name", ["adapter.safetensors", "adapter_model.safetensors"])
def test_damaged_adapter_weights_are_one_line_errors(tmp_path, damage, name):
    """truncated, empty or non-safetensors adapter weights (ours and PEFT's) -> CorruptFileError naming the file"""
    model = lora(alpha=8.0, seed=1)
    (al.save_adapter if name == "adapter.safetensors" else al.export_peft)(model, tmp_path)
    path = tmp_path / name
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    load = al.load_adapter if name == "adapter.safetensors" else al.load_peft
    with pytest.raises(CorruptFileError, match=f"{path} is not a complete safetensors file.*save the adapter again"):
        load(tiny_model("llama"), tmp_path)


@pytest.mark.reliability
@pytest.mark.parametrize("text", ["", '{"method": "lora", "r": 4,', "[1, 2]"])
def test_damaged_adapter_config_is_a_one_line_error(tmp_path, text):
    """empty, torn or non-object adapter_config.json -> CorruptFileError naming the file"""
    al.save_adapter(lora(alpha=8.0, seed=1), tmp_path)
    (tmp_path / "adapter_config.json").write_text(text)
    with pytest.raises(CorruptFileError, match=f"{tmp_path / 'adapter_config.json'} (is not valid JSON|holds a JSON list)"):
        al.load_adapter(tiny_model("llama"), tmp_path)


@pytest.mark.reliability
@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_head_is_a_one_line_error(tmp_path, damage):
    """truncated, empty or non-safetensors head.safetensors -> CorruptFileError naming the file"""
    model = tiny_model("bert")
    save_head(model, tmp_path, ["classifier"])
    path = tmp_path / "head.safetensors"
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    with pytest.raises(CorruptFileError, match=f"{path} is not a complete safetensors file"):
        load_head(tiny_model("bert"), tmp_path)


@pytest.mark.reliability
def test_prompt_adapter_naming_a_tokenizer_loads_nothing_from_outside(tmp_path, monkeypatch):
    """prompt adapter_config.json naming a tokenizer (no saved ids) -> refused; nothing outside the folder is read"""
    import transformers

    model = tiny_model("llama")
    al.attach(model, "prompt", num_virtual_tokens=4)
    al.save_adapter(model, tmp_path)
    path = tmp_path / "adapter_config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "init": "text", "init_text": "hello", "tokenizer": "/etc/somewhere"}))
    fetched = []
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: fetched.append(a))
    with pytest.raises(CorruptFileError, match=f"{path} has init='text' but no init_token_ids"):
        al.load_adapter(tiny_model("llama"), tmp_path)
    assert fetched == []
    path.write_text(json.dumps({**saved, "init": "text", "init_text": "hello", "tokenizer": "/etc/somewhere",
                                "init_token_ids": [5, 6]}))
    al.load_adapter(tiny_model("llama"), tmp_path)  # with its ids it loads, still without the tokenizer
    assert fetched == []


@pytest.mark.reliability
@pytest.mark.parametrize("where", ["file", "file/inside"])
def test_save_adapter_onto_a_file_is_refused(where, tmp_path):
    """save_adapter / export_peft to a path that is a file, or lies inside one -> RunFolderError (a FileExistsError)
    naming the path and saying to pass a folder; the file is left as it was"""
    from adapterlab.errors import RunFolderError

    (tmp_path / "file").write_text("keep me")
    model = lora(alpha=8.0, seed=1)
    for save in (al.save_adapter, al.export_peft):
        with pytest.raises(RunFolderError, match="is a file.*pass the path of a new or existing folder") as err:
            save(model, tmp_path / where)
        assert isinstance(err.value, FileExistsError) and "\n" not in str(err.value)
    assert (tmp_path / "file").read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.reliability
@pytest.mark.parametrize("method, options, field", [
    ("lora", {"targets": ["q", "v"], "r": 4}, "r"),
    ("series", {"size": 8}, "size"),
    ("prompt", {"num_virtual_tokens": 4}, "num_virtual_tokens"),
])
def test_config_sizes_that_disagree_with_the_weights_are_refused_before_allocating(method, options, field, tmp_path):
    """adapter_config.json with r (or size, or num_virtual_tokens) = 10**9 beside small weights -> one-line
    IncompatibleAdapterError from the safetensors header's shapes, at once, before any module is allocated"""
    import time

    model = tiny_model("llama")
    al.attach(model, method, **options)
    al.save_adapter(model, tmp_path)
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: 10**9}))
    fresh = tiny_model("llama")
    start = time.perf_counter()
    with pytest.raises(al.IncompatibleAdapterError, match=r"of shape .* needs .*1000000000.*does not match its weights"):
        al.load_adapter(fresh, tmp_path)  # allocating 10**9 x 32 float32 would take 128 GB
    assert time.perf_counter() - start < 5
    assert al.adapter_names(fresh) == [] and not any("adapterlab" in name for name, _ in fresh.named_modules())
