"""Checking a device string (`--device`) against what this build of torch can use, before anything loads.

torch itself fails late and in many ways (`AssertionError: Torch not compiled with CUDA enabled`, an invalid
device ordinal inside a kernel, a RuntimeError for a malformed string); every command that takes --device and
`load_model` call `check_device` first, so each of these is one line naming the flag and the fix.
"""

from __future__ import annotations

import torch

from ..errors import UsageError

KINDS = "cpu, cuda, cuda:N or mps"


def spell(flag: str, value: str) -> str:
    """How the user wrote it: `--device cuda` on the command line, `device='cuda'` in Python."""
    return f"{flag} {value}" if flag.startswith("--") else f"{flag}={value!r}"


def check_device(device: str | None, flag: str = "--device") -> str | None:
    """`device` unchanged if torch can run on it (None: the caller's default); else a UsageError naming `flag`
    (a CLI flag such as "--device", or a keyword argument such as "device")."""
    if device is None:
        return None
    if not isinstance(device, str):
        raise UsageError(f"{flag} must be a string such as {KINDS}, not {type(device).__name__}.")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"{spell(flag, device)}: not a device torch knows; give one of {KINDS}.") from None
    if parsed.type == "cpu":
        return device
    if parsed.type == "cuda":
        _check_cuda(device, parsed, flag)
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"{spell(flag, device)}: this build of torch or this machine has no MPS (Apple GPU); "
                             f"use {spell(flag, 'cpu')}.")
    else:
        raise UsageError(f"{spell(flag, device)}: adapterlab runs on {KINDS}; pick one of them.")
    return device


def _check_cuda(device: str, parsed: torch.device, flag: str) -> None:
    """A CUDA device must exist: a CUDA build of torch, a visible GPU, and the index within their count."""
    if torch.version.cuda is None and not torch.cuda.is_available():
        raise UsageError(f"{spell(flag, device)}: this build of torch has no CUDA support; use {spell(flag, 'cpu')}, "
                         "or install a CUDA build of torch.")
    if not torch.cuda.is_available():
        raise UsageError(f"{spell(flag, device)}: torch sees no CUDA device (check the driver and "
                         f"CUDA_VISIBLE_DEVICES); use {spell(flag, 'cpu')}.")
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise UsageError(f"{spell(flag, device)}: this machine has {count} CUDA device(s), so the index "
                         f"must be below {count}; pick one of them (or set CUDA_VISIBLE_DEVICES).")
