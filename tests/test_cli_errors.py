"""One error path: every user error prints one line `adapterlab CMD: error: ...`, exits 2, no traceback;
`--debug` shows the traceback instead."""

from __future__ import annotations

import errno

import pytest

from adapterlab.cli import main
from adapterlab.errors import DataError, MissingPathError, UserError


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"adapterlab {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.reliability
def test_missing_audio_folder_is_one_line(tmp_path, capsys):
    """train --task audio-cls with a missing audio folder -> one line naming the folder, exit 2, no run folder"""
    code = main(["train", "--task", "audio-cls", "--model", "config:ast-small", "--adapter", "lora",
                 "--data", str(tmp_path / "nope"), "--output", str(tmp_path / "run")])
    assert code == 2
    line = one_line_error(capsys, "train")
    assert "nope" in line
    assert not (tmp_path / "run").exists(), "nothing half-written"


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(MissingPathError):
        main(["train", "--task", "audio-cls", "--model", "config:ast-small", "--adapter", "lora", "--debug",
              "--data", str(tmp_path / "nope"), "--output", str(tmp_path / "run")])


def test_every_user_error_class_shares_one_base():
    import adapterlab.errors as errors
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert all(issubclass(c, UserError) for c in classes)
    assert issubclass(DataError, ValueError) and issubclass(MissingPathError, FileNotFoundError)


@pytest.mark.reliability
def test_os_errors_become_one_line_with_the_fix(monkeypatch, capsys):
    """disk full (or any OS error) inside a command -> one line naming the file and the fix, exit 2"""
    import adapterlab.commands.models as models_command

    def full_disk(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/x/adapter.safetensors")

    monkeypatch.setattr(models_command, "list_models", full_disk)
    assert main(["models", "list"]) == 2
    line = one_line_error(capsys, "models")
    assert "No space left on device: /tmp/x/adapter.safetensors" in line and "free disk space" in line


@pytest.mark.reliability
def test_a_bad_flag_is_one_line(capsys):
    """an unknown flag or a flag value of the wrong type -> one line naming it and pointing at --help, exit 2"""
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--model", "m", "--datasets", "gsm8k", "--batch-size", "many"])
    assert exit_info.value.code == 2
    line = one_line_error(capsys, "eval")
    assert "--batch-size" in line and "adapterlab eval --help" in line
    with pytest.raises(SystemExit):
        main(["train", "--no-such-flag", "1"])
    assert "--no-such-flag" in one_line_error(capsys, "train")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from train_helpers import causal_folder

    return causal_folder(tmp_path_factory.mktemp("llama"))


BAD_COMMANDS = {
    "train: data file missing": (["train", "--model", "{model}", "--adapter", "lora", "--data", "{tmp}/nope.json",
                                  "--output", "{tmp}/run"], "nope.json"),
    "train: model folder missing": (["train", "--model", "{tmp}/no-model", "--adapter", "lora", "--data",
                                     "{tmp}/data.json", "--output", "{tmp}/run"], "no-model"),
    "train: unknown method": (["train", "--model", "{model}", "--adapter", "lorra", "--data", "{tmp}/data.json",
                               "--output", "{tmp}/run"], "lorra"),
    "train: --config file missing": (["train", "--config", "{tmp}/c.yaml"], "c.yaml"),
    "eval: adapter folder missing": (["eval", "--model", "{model}", "--adapter-path", "{tmp}/none", "--datasets",
                                      "gsm8k"], "--adapter-path"),
    "eval: unknown data set": (["eval", "--model", "{model}", "--datasets", "nope"], "nope"),
    "measure: unknown method": (["measure", "--model", "{model}", "--methods", "full,nope", "--output",
                                 "{tmp}/m"], "nope"),
    "measure: malformed option": (["measure", "--model", "{model}", "--option", "r=3", "--output", "{tmp}/m"],
                                  "METHOD.KEY=VALUE"),
    "demo: zero steps": (["demo", "--model", "{model}", "--steps", "0", "--output", "{tmp}/d"], "steps"),
    "models: unknown name": (["models", "pull", "nope"], "nope"),
}


@pytest.mark.reliability
@pytest.mark.parametrize("case", sorted(BAD_COMMANDS))
def test_user_errors_of_every_command_are_one_line(case, folder, tmp_path, capsys):
    """a user error in any command (train, eval, measure, demo, models) -> one line naming the thing, exit 2, no traceback, nothing written"""
    argv, named = BAD_COMMANDS[case]
    argv = [a.format(model=folder, tmp=tmp_path) for a in argv]
    (tmp_path / "data.json").write_text('[{"instruction": "1+1?", "input": "", "output": "2", "answer": "2"}]')
    before = sorted(tmp_path.rglob("*"))
    assert main([*argv, "--no-progress"] if argv[0] in ("eval", "measure", "demo") else argv) == 2
    assert named in one_line_error(capsys, argv[0])
    assert sorted(tmp_path.rglob("*")) == before, "nothing half-written"


def test_warnings_are_one_line(monkeypatch, capsys):
    """A warning raised inside a command is one line naming the command, not Python's two-line format."""
    import warnings

    import adapterlab.commands.models as models_command

    def warn(args):
        warnings.warn("metrics.jsonl: dropped 1 torn line", UserWarning)
        return 0

    monkeypatch.setattr(models_command, "list_models", warn)
    assert main(["models", "list"]) == 0
    assert capsys.readouterr().err == "adapterlab models: warning: metrics.jsonl: dropped 1 torn line\n"


def no_cuda_build(monkeypatch) -> None:
    """Make torch look like a CPU-only build (as it is on this test machine, but also on a GPU machine)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)


DEVICE_COMMANDS = {
    "eval": ["eval", "--model", "{model}", "--datasets", "{tmp}/data.json", "--output", "{tmp}/out"],
    "measure": ["measure", "--model", "{model}", "--methods", "lora", "--output", "{tmp}/m"],
}


@pytest.mark.reliability
@pytest.mark.parametrize("case", sorted(DEVICE_COMMANDS))
def test_device_cuda_without_cuda_is_one_line(case, folder, tmp_path, monkeypatch, capsys):
    """--device cuda on a build of torch without CUDA (eval, measure) -> one line naming --device and the fix
    (--device cpu), exit 2, nothing written, no AssertionError from torch"""
    no_cuda_build(monkeypatch)
    argv = [a.format(model=folder, tmp=tmp_path) for a in DEVICE_COMMANDS[case]]
    (tmp_path / "data.json").write_text('[{"instruction": "1+1?", "input": "", "output": "2", "answer": "2"}]')
    before = sorted(tmp_path.rglob("*"))
    assert main([*argv, "--device", "cuda", "--no-progress"]) == 2
    line = one_line_error(capsys, argv[0])
    assert "--device cuda" in line and "no CUDA" in line and "--device cpu" in line
    assert sorted(tmp_path.rglob("*")) == before, "nothing half-written"


@pytest.mark.reliability
@pytest.mark.parametrize("device, named", [("cuda:3", "must be below 1"), ("gpu0", "not a device"),
                                           ("mps", "no MPS"), ("meta", "cpu, cuda")])
def test_device_torch_cannot_use_is_one_line(device, named, folder, tmp_path, monkeypatch, capsys):
    """eval --device with a CUDA index past the GPUs, a malformed string, mps without MPS or an unsupported kind
    -> one line naming --device and what to give, exit 2"""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    (tmp_path / "data.json").write_text('[{"instruction": "1+1?", "input": "", "output": "2", "answer": "2"}]')
    assert main(["eval", "--model", str(folder), "--datasets", str(tmp_path / "data.json"), "--device", device,
                 "--no-progress"]) == 2
    line = one_line_error(capsys, "eval")
    assert f"--device {device}" in line and named in line


@pytest.mark.reliability
def test_load_model_device_without_cuda_is_a_usage_error(folder, monkeypatch):
    """load_model(device='cuda') on a build of torch without CUDA -> UsageError naming device='cuda', not torch's
    AssertionError"""
    from adapterlab.errors import UsageError
    from adapterlab.models import load_model

    no_cuda_build(monkeypatch)
    with pytest.raises(UsageError, match=r"device='cuda': this build of torch has no CUDA") as err:
        load_model(str(folder), device="cuda")
    assert "\n" not in str(err.value)
