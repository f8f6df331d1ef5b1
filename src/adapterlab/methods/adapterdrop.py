"""AdapterDrop (Rücklé et al., EMNLP 2021): adapters in the lowest k blocks are skipped in training and removed
at inference, so a model runs fewer adapters and a forward gets cheaper.

A method opts in through two hooks of `AdapterConfig` (the bottleneck adapters do; `methods/bottleneck.py` documents
the options): its `sites` drop the sites AdapterDrop removes (`drop_sites`) and its `gate` gives each module its
`LayerDrop`, a `Gate` the engine asks whether the adapter runs. The engine knows nothing else of AdapterDrop:

* "fixed" (the paper's specialised AdapterDrop, k fixed in training): no adapter is placed in blocks 0..k-1 at all.
* "robust" (the paper's robust AdapterDrop): places adapters in every block; each training step draws
  j uniformly from {0, ..., n-1} (n blocks; the paper's 0..11 on 12-layer BERT) and skips the adapters of blocks
  0..j-1 (`LayerDrop`, a `Stochastic` module: the draw is a function of seed and step, the same on every
  torchrun rank and micro-batch, and after --resume). In eval mode the adapters of blocks 0..k-1 have no
  hooks at all (the gate is not `present` there), so dropping costs nothing; `set_drop_layers` picks k after training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from ..core.adapter import Gate
from ..core.engine import get_config
from ..core.site_hooks import placed, sync_site_hooks
from ..core.sites import Placement, Site
from ..core.stochastic import Stochastic
from ..errors import AdapterError

DROP_TRAINING = ("fixed", "robust")


@dataclass(frozen=True)
class AdapterDrop:
    """One adapter's AdapterDrop: `layers` = k, the lowest blocks without adapter at inference; `training`:
    "fixed" (skip those same k in training) or "robust" (skip a random number of lowest blocks each step)."""

    method: str
    layers: int
    training: str


def check_drop(method: str, layers: object, training: object) -> None:
    """Raise AdapterError unless drop_layers is an integer >= 0 and drop_training a known variant."""
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 0:
        raise AdapterError(f"{method}: `drop_layers` must be an integer of at least 0 (the number of lowest blocks "
                           f"whose adapters AdapterDrop removes; 0 drops none), got {layers!r}.")
    if training not in DROP_TRAINING:
        raise AdapterError(f"{method}: `drop_training` must be one of {list(DROP_TRAINING)} ('fixed': the paper's "
                           f"specialised AdapterDrop, 'robust': a random k per training step), got {training!r}.")


class LayerDrop(Stochastic, Gate):
    """Whether the adapter of block `layer` runs now: robust AdapterDrop's random skip in training, the fixed
    k = `inference` in eval mode. No parameters or buffers, so saved adapters do not change."""

    def __init__(self, key: str, layer: int, blocks: int, inference: int) -> None:
        super().__init__(key)
        self.layer, self.blocks, self.inference = layer, blocks, inference

    def present(self, training: bool) -> bool:
        """Whether this adapter needs hooks in this mode (eval removes the dropped ones outright)."""
        return training or self.layer >= self.inference

    def runs(self) -> bool:
        if not self.training:
            return self.layer >= self.inference
        draws = self.current_draws(0)
        if draws.groups > 1:
            raise AdapterError(f"{self.draw_key}: robust AdapterDrop draws one k per step; a training loss with "
                               f"{draws.groups} forward groups (MoSA's consistency) is not supported with it.")
        return self.layer >= draws.choice(self.draw_key, self.blocks)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, blocks={self.blocks}, inference={self.inference}"


def layer_drop(plan: AdapterDrop | None, site: Site, name: str, placement: Placement) -> LayerDrop | None:
    """The gate of adapter `name`'s module at `site` under `plan`: robust AdapterDrop's LayerDrop, else None."""
    if plan is None or plan.training != "robust":
        return None
    return LayerDrop(f"adapterdrop:{name}", site.layer, len(placement.blocks), plan.layers)


def drop_sites(plan: AdapterDrop, sites: list, blocks: list[str]) -> list:
    """The sites with their block index filled in; under "fixed" only those of blocks k and up."""
    k, n = plan.layers, len(blocks)
    if k >= n:
        raise AdapterError(f"{plan.method}: `drop_layers` is {k}, but this model has {n} blocks; drop at most "
                           f"{n - 1} so that at least the top block keeps its adapter.")
    placed = []
    for site in sites:
        layer = site.layer
        if layer is None:
            layer = next((i for i, p in enumerate(blocks) if site.path.startswith(p + ".")), None)
            if layer is None:
                raise AdapterError(f"{plan.method}: AdapterDrop removes adapters by block, but target "
                                   f"{site.target!r} matched {site.path!r}, outside the blocks; target layers "
                                   "inside the transformer blocks or leave drop_layers at 0.")
            site = dataclasses.replace(site, layer=layer)
        if plan.training == "robust" or layer >= k:
            placed.append(site)
    if not placed:
        raise AdapterError(f"{plan.method}: with drop_layers={k} (fixed) no adapter is left in the chosen layers; "
                           "lower drop_layers or choose higher `layers`.")
    return placed


def set_drop_layers(model: nn.Module, layers: int, name: str = "default") -> nn.Module:
    """Choose k for a robust AdapterDrop adapter after training: its adapters in blocks 0..k-1 stop running
    at inference (no hooks); the adapter's config, and so `save_adapter`, records the new drop_layers."""
    config = get_config(model, name)
    plan = config.adapter_drop() if hasattr(config, "adapter_drop") else None
    if plan is None or plan.training != "robust":
        raise AdapterError(f"Adapter {name!r} ({config.method}) was not trained with drop_training='robust', so "
                           "its lower adapters cannot be dropped afterwards; attach it with drop_training='robust' "
                           "(a 'fixed' adapter has no adapters below its drop_layers to bring back).")
    new = dataclasses.replace(config, drop_layers=layers)  # validates the value
    drops = [adapter.gate for _, _, adapter in placed(model, name)]
    if layers >= drops[0].blocks:
        raise AdapterError(f"{config.method}: `drop_layers` is {layers}, but this model has {drops[0].blocks} "
                           f"blocks; drop at most {drops[0].blocks - 1}.")
    for drop in drops:
        drop.inference = layers
    model.adapterlab_configs = {**model.adapterlab_configs, name: new}
    sync_site_hooks(model, force=True)
    return model


__all__ = ["AdapterDrop", "DROP_TRAINING", "LayerDrop", "check_drop", "drop_sites", "layer_drop", "set_drop_layers"]
