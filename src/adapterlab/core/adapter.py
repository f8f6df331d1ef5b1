"""What every adapter module can do at its site; the engine calls these from forward hooks.

A module at a "module" or "sublayer" site sees the site's input `x` and output `y`:
`adapt_input(x)` may change the input before the host layer runs (IA3 on the MLP) and
`adapt_output(x, y)` returns the new output (LoRA: y + BAx; series: y + f(y); parallel: y + f(x)).
A module at the "model" site rewrites the model's call (`before_model`) and result (`after_model`),
as prompt and prefix tuning do. A method may give a module a `Gate` (AdapterDrop's per-step skip): the engine
only asks the adapter whether it `applies` now.

The hooks cost a Python call per host layer and forward, so the engine installs only those an adapter needs
(`changes_input`, `changes_output`, `reads_input`), and none while it is off or merged (`hooked`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import AdapterError, NotMergeableError
from .layers import is_linear

if TYPE_CHECKING:
    from .sites import Site


class Gate(nn.Module):
    """Whether a placed adapter runs now, given to it by its method (`AdapterConfig.gate`): AdapterDrop's skip
    of the lower blocks. A gate whose adapter is not `present` in a mode has no hooks at all in that mode."""

    def runs(self) -> bool:
        """Whether the adapter runs in this forward."""
        return True

    def present(self, training: bool) -> bool:
        """Whether the adapter needs its hooks in train (True) or eval (False) mode."""
        return True


class RowStack:
    """Several adapters of one method at one site (`members`) run as one for a mixed-adapter batch
    (`core/row_routing.py`), each row by its own: `index[i]` is the member of row i, len(members) for a row that none
    of them runs (it must come out as the base model's). Built by `Adapter.stack_rows`; the methods mirror the
    Adapter's. `cached` keeps stacked weights between calls."""

    def __init__(self, members: list[Adapter]) -> None:
        self.members = members
        self._parameters = [p for a in members for p in a.parameters()]  # walked once: a walk per call costs
        self._cache: tuple[tuple, Any] | None = None

    def adapt_input(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return x

    def adapt_output(self, x: torch.Tensor | None, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return y

    def before_model(self, model: nn.Module, args: tuple, kwargs: dict[str, Any],
                     index: torch.Tensor) -> tuple[tuple, dict[str, Any]]:
        return args, kwargs

    def after_model(self, model: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any,
                    index: torch.Tensor) -> Any:
        return output

    def cached(self, build: Any) -> Any:
        """build() (e.g. the members' weights stacked), kept until a member's parameter changes in place (its version
        counter: optimizer steps, load_state_dict); built anew on every call while autograd records, so that gradients
        reach the members. A parameter replaced by a new object is seen once the plans are made anew (set_active,
        attach, detach, or another set of names)."""
        if torch.is_grad_enabled():
            return build()
        key = tuple(p._version for p in self._parameters)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, build())
        return self._cache[1]


class Adapter(nn.Module):
    """Base class of the modules that adapter methods place in a model.

    The engine folds an adapter into its host layer with `fold` and takes it out with `unfold`; a mergeable
    method implements the `merge_into` / `unmerge_from` hooks, and the base keeps `merged` and `requires_grad`."""

    def __init__(self) -> None:
        super().__init__()
        self.active = True
        self.merged = False
        self.trainable = True  # whether set_active made it trainable (a merged adapter is frozen meanwhile)
        self.gate: Gate | None = None  # the method's per-forward gate (AdapterDrop), or None: always runs
        self._in_dtype: torch.dtype | None | bool = False  # cast_in's cache: False = unknown, None = no parameters
        self._shared = None  # the SharedDown of adapters reading this one's input (core/shared_input.py), if fused

    _name = ""  # the name it was attached under (set by attach)
    _routing = None  # the model's RowRouting (core/row_routing.py), set by attach
    _row_plan = None  # how it runs in mixed-adapter batches naming it (core/row_sites.py)
    _hooks_standby = False  # whether it has hooks only for mixed-adapter batches naming it (core/site_hooks.py)
    changes_base = False  # whether it holds a change to its host's weight made by `on_attach` (PiSSA's residual)

    @property
    def applies(self) -> bool:
        """Whether the hooks should run this adapter now (active, not folded into the base, its gate open, and no
        mixed-adapter batch running: that runs the adapters it names itself)."""
        return (self.active and not self.merged and (self.gate is None or self.gate.runs())
                and (self._routing is None or self._routing.call is None))

    @classmethod
    def stack_rows(cls, adapters: list[Adapter]) -> RowStack | None:
        """Optional fast path of mixed-adapter batches: one RowStack running `adapters` (all of this method, at one
        site) each on its own rows in one pass; None runs each on its rows alone (index_select, then put back).
        A model-site method must implement it (or raise an AdapterError saying why it cannot)."""
        return None

    @property
    def hooked(self) -> bool:
        """Whether this adapter needs its hooks now: active, not folded into the base, and present in the model's
        mode (a gate may say no in eval mode). The engine re-syncs the hooks whenever one of these changes."""
        return self.active and not self.merged and (self.gate is None or self.gate.present(self.gate.training))

    def changes_input(self) -> bool:
        """Whether `adapt_input` may change the site's input (only then does the entry layer get a pre-hook)."""
        return type(self).adapt_input is not Adapter.adapt_input

    def changes_output(self) -> bool:
        """Whether `adapt_output` may change the site's output (only then does the host layer get a hook)."""
        return type(self).adapt_output is not Adapter.adapt_output

    def reads_input(self) -> bool:
        """Whether `adapt_output` reads the site's input `x`; at a sublayer site, one that does not (a series
        adapter) is handed None and its entry layer gets no hook."""
        return True

    def down_projection(self) -> nn.Linear | None:
        """The plain linear layer this adapter applies first to its dtype-cast site input, where that is all it does
        to the input now (no norm in front, no dropout drawn on it), so that `core/shared_input.py` may compute it in
        one matmul with other adapters' that read the same input; None (the default) where not."""
        return None

    def adapt_output_after_down(self, x: torch.Tensor, y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """`adapt_output(x, y)` given h, `down_projection()` applied to `cast_in(x)`."""
        raise NotImplementedError(f"{type(self).__name__} has no down_projection to finish from.")

    def cast_in(self, x: torch.Tensor) -> torch.Tensor:
        """x cast to the dtype of this adapter's parameters (see `in_dtype_of`), the dtype looked up once and
        again after every `.to()` / `.half()` (`_apply`)."""
        dtype = self._in_dtype
        if dtype is False:
            dtype = self._in_dtype = next((p.dtype for p in self.parameters()), None)
        return x if dtype is None or x.dtype == dtype else x.to(dtype)

    def _apply(self, fn: Any, recurse: bool = True) -> Adapter:
        self._in_dtype = False  # .to(dtype), .half(), ... may change the parameters' dtype
        return super()._apply(fn, recurse)

    def fold(self, host: nn.Module) -> None:
        """Fold this adapter into `host`'s weights (a no-op when it already is) and freeze it meanwhile: its hooks
        are off while merged, so it would get no gradient."""
        if self.merged:
            return
        self.merge_into(host)
        self.merged = True
        self.requires_grad_(False)

    def unfold(self, host: nn.Module) -> None:
        """Take this adapter back out of `host`'s weights (a no-op when it is not merged); it trains again when
        it is active and set_active made it trainable."""
        if not self.merged:
            return
        self.unmerge_from(host)
        self.merged = False
        self.requires_grad_(self.active and self.trainable)

    def forget_fold(self) -> None:
        """Keep the merged weights and forget that they hold this adapter (merge_and_unload, before detaching); an
        override also forgets what `on_attach` changed in the host, which the merged weights keep."""
        self.merged = False

    def on_attach(self, host: nn.Module) -> None:
        """Hook of attach, once this module sits at `host` (every module built, dtypes settled): an adapter whose
        initial values come from the host's weight (DoRA's magnitude, PiSSA's singular vectors) sets them here, and
        one that changes the host (PiSSA's residual weight) does so here and undoes it in `on_detach`."""

    def on_detach(self, host: nn.Module) -> None:
        """Hook of detach, after `unfold`: undo what `on_attach` changed in `host` (default: nothing)."""

    def adapt_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y

    def before_model(self, model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        return args, kwargs

    def after_model(self, model: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        return output

    def penalty(self) -> torch.Tensor | None:
        """A term this module adds to the training loss (AdapterFusion's value regularization), or None."""
        return None

    def check_inputs(self, names: set[str]) -> None:
        """Refuse model inputs (by name: a training example's keys, a call's arguments) this adapter cannot take."""

    def hook_submodules(self, model: nn.Module) -> list:
        """Extra hooks a model-site adapter registers inside the model (e.g. at every block); their handles."""
        return []

    def merge_into(self, host: nn.Module) -> None:
        """Hook of `fold`: add this adapter to `host`'s weights so that inference costs nothing extra."""
        raise NotMergeableError(f"{type(self).__name__} cannot be merged into the base weights.")

    def unmerge_from(self, host: nn.Module) -> None:
        """Hook of `unfold`: undo `merge_into`, restoring the base weights."""
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


def linear_host(site: Site, model: nn.Module, does: str, examples: str) -> nn.Module:
    """The linear layer at `site`, or an AdapterError saying what matched instead and what to target."""
    host = model.get_submodule(site.path)
    if not is_linear(host):
        raise AdapterError(
            f"{does} linear layers; target {site.target!r} matched {site.path!r}, a "
            f"{type(host).__name__}. Target its projections instead (e.g. {examples})."
        )
    return host
