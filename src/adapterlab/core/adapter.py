"""What every adapter module can do at its site; the engine calls these from forward hooks.

A module at a "module" or "sublayer" site sees the site's input `x` and output `y`:
`adapt_input(x)` may change the input before the host layer runs (IA3 on the MLP) and
`adapt_output(x, y)` returns the new output (LoRA: y + BAx; series: y + f(y); parallel: y + f(x)).
A module at the "model" site rewrites the model's call (`before_model`) and result (`after_model`),
as prompt and prefix tuning do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import AdapterError, NotMergeableError
from .layers import is_linear

if TYPE_CHECKING:
    from .sites import Site


class Adapter(nn.Module):
    """Base class of the modules that adapter methods place in a model."""

    def __init__(self) -> None:
        super().__init__()
        self.active = True
        self.merged = False
        self.trainable = True  # whether set_active made it trainable (a merged adapter is frozen meanwhile)
        self.layer_drop: nn.Module | None = None  # AdapterDrop's per-step skip, set by the engine (adapterdrop.py)

    @property
    def applies(self) -> bool:
        """Whether the hooks should run this adapter now (active, not folded into the base, not dropped)."""
        return self.active and not self.merged and (self.layer_drop is None or self.layer_drop.runs())

    def adapt_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y

    def before_model(self, model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        return args, kwargs

    def after_model(self, model: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        return output

    def check_inputs(self, names: set[str]) -> None:
        """Refuse model inputs (by name: a training example's keys, a call's arguments) this adapter cannot take."""

    def hook_submodules(self, model: nn.Module) -> list:
        """Extra hooks a model-site adapter registers inside the model (e.g. at every block); their handles."""
        return []

    def merge(self, host: nn.Module) -> None:
        """Fold this adapter into `host`'s weights so that inference costs nothing extra."""
        raise NotMergeableError(f"{type(self).__name__} cannot be merged into the base weights.")

    def unmerge(self, host: nn.Module) -> None:
        """Undo `merge`, restoring the base weights."""
        raise NotMergeableError(f"{type(self).__name__} cannot be unmerged.")


ADAPTER_DTYPES = ("float32", "base")
HALF_PRECISION = (torch.float16, torch.bfloat16)


def check_adapter_dtype(value: Any) -> None:
    """Raise AdapterError unless `value` is an adapter dtype policy attach knows."""
    if value not in ADAPTER_DTYPES:
        raise AdapterError(
            f"adapter_dtype must be 'float32' (adapters over a half-precision base stay float32) or 'base' "
            f"(the base layers' dtype), got {value!r}."
        )


def keep_dtype(adapter: nn.Module, policy: str) -> None:
    """Apply attach's adapter_dtype: "float32" upcasts a half-precision adapter (built in its base layer's
    dtype) to float32, as PEFT's autocast_adapter_dtype; "base" leaves it as built."""
    if policy == "float32" and any(p.dtype in HALF_PRECISION for p in adapter.parameters()):
        adapter.to(torch.float32)


def in_dtype_of(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x cast to the dtype of module's parameters (adapters may be kept in float32 over a half base)."""
    for p in module.parameters():
        return x if x.dtype == p.dtype else x.to(p.dtype)
    return x


def linear_host(site: "Site", model: nn.Module, does: str, examples: str) -> nn.Module:
    """The linear layer at `site`, or an AdapterError saying what matched instead and what to target."""
    host = model.get_submodule(site.path)
    if not is_linear(host):
        raise AdapterError(
            f"{does} linear layers; target {site.target!r} matched {site.path!r}, a "
            f"{type(host).__name__}. Target its projections instead (e.g. {examples})."
        )
    return host
