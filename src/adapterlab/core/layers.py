"""Facts about linear-like layers (nn.Linear, transformers' transposed Conv1D, and quantized subclasses of
nn.Linear such as bitsandbytes' Linear8bitLt / Linear4bit, whose weight is stored as integers)."""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..errors import NotMergeableError

_ON_META = contextvars.ContextVar("adapterlab_build_on_meta", default=False)


@contextlib.contextmanager
def building_on_meta() -> Iterator[None]:
    """Within: adapter modules are built on the meta device (`reference_tensor` says meta, and so does torch's
    default device), so their shapes can be known without allocating them, e.g. to check a saved adapter first."""
    token = _ON_META.set(True)
    try:
        with torch.device("meta"):
            yield
    finally:
        _ON_META.reset(token)


def _building_on_meta() -> bool:
    """Whether adapters are being built on meta now. A forward that torch.compile traces (`--compile`) never builds
    them, and reading the ContextVar there would break its graph (dynamo cannot trace ContextVar.get)."""
    return not torch.compiler.is_compiling() and _ON_META.get()


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def linear_features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear or Conv1D."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    raise TypeError(f"{type(module).__name__} is not a linear layer")


def is_quantized_layer(module: nn.Module) -> bool:
    """Whether a layer stores its weight quantized (as integers: bitsandbytes int8 or packed 4-bit)."""
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and not weight.is_floating_point()


def weight_as_out_in(module: nn.Module) -> torch.Tensor:
    """The weight laid out (out, in) whatever the layer type; a view, so in-place edits reach the layer.

    A quantized weight is refused: adding a float update to it in place would be rounded away or corrupt it.
    """
    if is_quantized_layer(module):
        raise NotMergeableError(
            f"This {type(module).__name__} stores its weight quantized ({module.weight.dtype}), so an adapter "
            "cannot be merged into it (the update would be rounded into the quantization error). Keep the adapter "
            "unmerged on the quantized base, or load the base unquantized (without --load-8bit / --load-4bit), "
            "load the adapter there and merge."
        )
    return module.weight.T if isinstance(module, Conv1D) else module.weight


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a quantized layer computes in: its own compute dtype (bitsandbytes 4-bit), else float32."""
    dtype = getattr(module, "compute_dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def reference_tensor(module: nn.Module) -> torch.Tensor:
    """A tensor of the module whose device and dtype new adapter parameters should share: its first floating
    parameter; for a layer holding only quantized weights, an empty tensor on their device in the layer's
    compute dtype (adapters never take an integer dtype)."""
    parameters = list(module.parameters())
    for p in parameters:
        if p.is_floating_point():
            return torch.empty(0, device="meta", dtype=p.dtype) if _building_on_meta() else p
    if parameters:
        device = "meta" if _ON_META.get() else parameters[0].device
        return torch.empty(0, device=device, dtype=compute_dtype(module))
    raise ValueError(f"{type(module).__name__} has no parameters to take a device and dtype from")


def is_norm(module: nn.Module) -> bool:
    """Whether a layer normalises features, by its class name as torch and transformers spell them
    (LayerNorm, GroupNorm, BatchNorm1d, LlamaRMSNorm, T5LayerNorm, ...)."""
    return re.search(r"Norm(\d+d)?$", type(module).__name__) is not None
