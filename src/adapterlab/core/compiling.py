"""torch.compile of an adapted model (`--compile` of `train` and `eval`): the backend check, the adapters it is refused
for, and the in-place compile that evaluation uses (training hands it to the HF Trainer's `torch_compile`).

Adapters run from forward hooks on the model's layers, and dynamo traces module hooks with the layers, so every
method's adapters land in the model's graph with no change. Refused: training a method that draws at random each
step (MoSA's module choice, robust AdapterDrop's skipped blocks; `stochastic.py`). Its draw is a Python choice that
dynamo cannot trace (`zlib.crc32`), so the graph breaks at every drawn module in every step and each branch taken
compiles its own graph: the compiled step gives the eager step's loss (tests) but little of the graph is left to
speed up. In evaluation nothing is drawn, so every method compiles.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import UsageError
from .engine import adapter_names, get_config
from .site_hooks import placed
from .stochastic import Stochastic

BACKEND = "inductor"  # torch.compile's own default: generated kernels (a C++ compiler on CPU, Triton on GPU)


def check_backend(backend: str, spell: Callable[[str], str] = str) -> None:
    """Refuse a torch.compile backend torch does not know, listing those it does."""
    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise UsageError(f"{spell('compile_backend')} {backend!r} is not a torch.compile backend; known ones: "
                         f"{', '.join(sorted(known))} (inductor generates kernels; aot_eager traces the same graphs "
                         "and runs them eagerly, to check tracing without a compiler).")


def chosen_backend(compile: bool, backend: str | None, spell: Callable[[str], str] = str) -> str | None:
    """The backend `--compile` runs with (None: not compiling); a backend given without `--compile` is refused."""
    if not compile:
        if backend is not None:
            raise UsageError(f"{spell('compile_backend')} {backend} picks the backend of {spell('compile')}, which is "
                             f"off; add {spell('compile')} or drop {spell('compile_backend')}.")
        return None
    check_backend(backend or BACKEND, spell)
    return backend or BACKEND


def drawing_adapters(model: nn.Module) -> list[str]:
    """The adapters of `model` (as 'name (method)') that draw at random in each training step."""
    return [f"{name} ({get_config(model, name).method})" for name in adapter_names(model)
            if any(isinstance(m, Stochastic) for _, _, adapter in placed(model, name) for m in adapter.modules())]


def check_compiled_training(model: nn.Module, spell: Callable[[str], str] = str) -> None:
    """Refuse `--compile` for training a model whose adapters draw at random each step (see the module docstring)."""
    drawing = drawing_adapters(model)
    if drawing:
        raise UsageError(
            f"{spell('compile')}: adapter {', '.join(drawing)} draws at random in each training step (MoSA's module "
            "choice, robust AdapterDrop's skipped blocks). The draw is a Python choice that torch.compile cannot "
            "trace, so the graph would break at every drawn module in every step, leaving little to compile. Train "
            f"it without {spell('compile')} (evaluating it with {spell('compile')} works).")


def compile_for_eval(model: nn.Module, backend: str = BACKEND) -> nn.Module:
    """Compile `model`'s call in place (hooks included, so adapters too) for evaluation; returns `model`.

    The model object stays the same (generate(), its config and adapters work as before). Shapes are compiled
    dynamic from the start: a decode step's rows and cache length change at every step, and graphs specialised to
    each shape would recompile until torch gives up and runs eagerly.
    """
    check_backend(backend)
    model.compile(backend=backend, dynamic=True)
    return model


__all__ = ["BACKEND", "check_backend", "chosen_backend", "check_compiled_training", "compile_for_eval", "drawing_adapters"]
