"""`train_norms`: train each adapted block's norm in front of the adapted sublayer beside the adapter, as PETL for
AST's code does (umbertocappellazzo/PETL_AST src/AST_adapters.py, AST_adapter._unfreeze_adapters: layernorm_after
with an MLP adapter, layernorm_before too with Houlsby's attention adapter).

The norms train through zero-initialised deltas of their weight and bias (`linear_probe.NormDelta`), so the base
model stays untouched and the trained norms are saved, loaded and switched with the adapter. Off by default:
the adapter alone is the method as its papers define it; their AST counts (7-8% above the adapter alone) need it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.option_help import option_field
from ..errors import AdapterError
from ..core.sites import Placement, Site, block_paths
from .linear_probe import NormDelta

if TYPE_CHECKING:
    from torch import nn

NORM_TARGET = "train_norms"  # the target name of a norm site, which tells `build` to train the norm


@dataclass
class BlockNorms:
    """The `train_norms` option of the bottleneck and conformer adapters (the module docstring says how)."""

    train_norms: bool = option_field(False, "also train the norm in front of each adapted sublayer (attn_norm / "
                                     "mlp_norm of the architecture row)",
                                     paper="PETL for AST's code trains them: pass true")

    def check_train_norms(self, method: str) -> None:
        if not isinstance(self.train_norms, bool):
            raise AdapterError(f"{method}: `train_norms` must be true or false, got {self.train_norms!r}.")

    def with_norms(self, sites: list[Site], model: nn.Module, placement: Placement) -> list[Site]:
        """`sites`, plus one site per block norm in front of an adapted sublayer where train_norms is on."""
        if not self.train_norms:
            return sites
        norms = {site.path: site for site in (norm_site(s, model, placement, self.method) for s in sites)}
        return sites + list(norms.values())

    def build_norm(self, site: Site, model: nn.Module) -> NormDelta | None:
        """The trained-norm module for a norm site; None for the method's own sites."""
        return NormDelta(model.get_submodule(site.path)) if site.target == NORM_TARGET else None


def norm_site(site: Site, model: nn.Module, placement: Placement, method: str) -> Site:
    """The site of the norm in front of the sublayer (attention or MLP) that `site` adapts."""
    arch = placement.architecture
    if arch.post_norm:
        raise AdapterError(f"{method}: train_norms trains the norm in front of each adapted sublayer, but "
                           f"{arch.name} is post-norm (none in front); drop train_norms.")
    if site.layer is None:
        raise AdapterError(f"{method}: train_norms needs targets inside the model's blocks; {site.path!r} is in "
                           "none. Target attn/mlp or their projections, or drop train_norms.")
    block = block_paths(model, arch)[site.layer]
    relative = site.entry[len(block) + 1:]
    attention = {arch.q, arch.k, arch.v, arch.o, arch.qkv} - {None}
    mlp = {arch.up, arch.gate, arch.down} - {None}
    if relative in (arch.attn_norm, arch.mlp_norm):  # a residual-stream site (AdaptFormer) reads the norm's input
        norm: str | None = relative
    else:
        norm = arch.attn_norm if relative in attention else arch.mlp_norm if relative in mlp else None
    if norm is None:
        raise AdapterError(f"{method}: train_norms cannot tell which norm feeds {site.entry!r} (the {arch.name} "
                           "row names none for it); target attn/mlp or their projections, or drop train_norms.")
    path = f"{block}.{norm}"
    return Site("module", path, path, NORM_TARGET, site.layer)


__all__ = ["BlockNorms", "NORM_TARGET"]
