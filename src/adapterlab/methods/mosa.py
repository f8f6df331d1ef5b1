"""MoSA (Zhang et al., arXiv 2312.02923; code Theia-4869/MoSA): a standard adapter whose projections are split
into N sparse modules, trained one drawn module at a time with a consistency loss, and merged back into one.

    attach(model, "mosa", base="parallel", modules=4, split="up", consistency=1.0, size=64, targets=["mlp"])

The default base is `adaptformer`, the adapter of their code and scripts (STYLE="AdaptFormer": LN on the
residual stream, down 64, GELU, dropout 0.1, up, x 0.1), so `attach(model, "mosa")` builds their default.

Any option that is not MoSA's own goes to the base method (size, r, alpha, targets, ...). `split` names the
projections that are split: "up" (their SHARE="down", the default: the down-projection stays dense and
shared), "down" (their SHARE="up") or "both" (SHARE="none"). Training draws one module per split projection,
layer and forward (`stochastic.py`); `consistency` and `additional` weight the second forward's symmetric KL and
cross entropy (`objectives.py`; their scripts: 1.0 and 0.0). Eval mode runs the merged adapter; `save_adapter`
writes it as a plain adapter of the base method. The paper's "hierarchical sparse strategy" is not in the
official code and not here: only the SHARE choices are.

Where this differs from the official code, on purpose: split projections are initialised as AdaptFormer and LoRA
do (down Kaiming-uniform, up zeros) whatever the base's `init`; a module not drawn in a step is not updated at
all (their PyTorch 1.11 `zero_grad()` left zero gradients, so momentum and weight decay moved idle copies) and
weight decay reaches only a module's own entries (see `split.py`); the draws are a function of the training step
(reproducible under torchrun, gradient accumulation, activation checkpointing and resume) rather than Python's
global `random`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.config import AdapterConfig, one_of
from ..core.option_help import documented, option_field
from ..errors import AdapterError
from ..core.objectives import ConsistencyObjective
from .block_norms import NORM_TARGET
from .lora_init import check_init
from .split import SplitLinear

if TYPE_CHECKING:
    from torch import nn

    from ..core.sites import Placement, Site
    from ..core.adapter import Adapter

BASES = ("lora", "series", "pfeiffer", "houlsby", "parallel", "scaled_parallel", "adaptformer")
SPLITS = {"up": ("up",), "down": ("down",), "both": ("down", "up")}
INIT = {"down": "kaiming", "up": "zeros"}


@documented
@dataclass
class MosaConfig(AdapterConfig):
    """MoSA (Zhang et al., 2023): the base adapter's projections split into sparse modules, one drawn per step, merged
    back into one adapter of the base method; every option not MoSA's own goes to the base (size, r, ...)."""

    method = "mosa"
    # Method facts, read as class attributes like every method's: the class has those of its default base
    # (adaptformer), a config those of its own base (set in `validate`); mergeable only with base="lora".
    mergeable = False
    mergeable_when = "base=lora"
    site_kinds = ("module", "sublayer")
    default_targets = ("mlp",)

    base: str = option_field("adaptformer", "the adapter that is split: adaptformer (their STYLE=AdaptFormer), lora, "
                             "series, pfeiffer, houlsby, parallel or scaled_parallel")
    modules: int = option_field(4, "the number of sparse modules per split projection (2 to 255)")
    split: str = option_field("up", "which projections are split: up (their SHARE=down), down (SHARE=up) or both "
                              "(SHARE=none); on the command line --mosa-split")
    consistency: float = option_field(1.0, "the weight of the second forward's symmetric KL (their REG_WEIGHT)")
    additional: float = option_field(0.0, "the weight of the second forward's cross entropy (their ADD_WEIGHT)")
    seed: int = option_field(0, "the seed of the masks and the split projections' initial values (with the layer's "
                             "name; independent of the training seed); on the command line --mosa-seed")
    base_options: dict[str, Any] = option_field(default_factory=dict,
                                                help="the base method's options (any option not MoSA's own lands "
                                                     "here too)")

    @classmethod
    def from_options(cls, options: dict[str, Any], source: str | None = None) -> MosaConfig:
        """MoSA's own options here, every other one to the base method (checked by the base's config)."""
        own = {f.name for f in dataclasses.fields(cls)}
        mine = {k: v for k, v in options.items() if k in own}
        rest = {k: v for k, v in options.items() if k not in own}
        mine["base_options"] = {**dict(options.get("base_options") or {}), **rest}
        return super().from_options(mine, source)

    @classmethod
    def accepted_options(cls, options: dict[str, Any]) -> set[str]:
        from ..core.registry import config_class

        base = options.get("base", cls.base)
        return set(cls.option_names()) | (set(config_class(base).option_names()) if base in BASES else set())

    def validate(self) -> None:
        from ..core.registry import config_class, make_config

        if self.base not in BASES:
            raise AdapterError(f"mosa: `base` {self.base!r} cannot be split into sparse modules; choose one of "
                               f"{', '.join(BASES)} (prompt, prefix, ia3, bitfit and conformer have no "
                               "down/up projections to split).")
        if not isinstance(self.modules, int) or isinstance(self.modules, bool) or self.modules < 2:
            raise AdapterError(f"mosa: `modules` must be an integer of at least 2 (the paper uses 4), got "
                               f"{self.modules!r}.")
        if self.modules > 255:
            raise AdapterError(f"mosa: `modules` is at most 255, got {self.modules}.")
        one_of(self.method, "split", self.split, tuple(SPLITS))
        for name in ("consistency", "additional"):
            if float(getattr(self, name)) < 0:
                raise AdapterError(f"mosa: `{name}` must be 0 or more, got {getattr(self, name)!r}.")
        options = dict(self.base_options)
        if self.base != "lora" and options.setdefault("init", "zero") != "zero":
            raise AdapterError(f"mosa: the split projections start as AdaptFormer's (down Kaiming, up zero); "
                               f"drop init={options['init']!r} or pass init='zero'.")
        if self.base == "lora" and (options.get("use_dora") or check_init(options.get("init_lora_weights", True))
                                    is not True):
            raise AdapterError("mosa: use_dora and init_lora_weights are not supported with MoSA: its split "
                               "projections start as AdaptFormer's (down Kaiming, up zero) and are drawn anew each "
                               "step; attach lora alone for DoRA or another init.")
        base_names = set(config_class(self.base).option_names())
        unknown = sorted(set(options) - base_names)
        if unknown:  # the base's own message would list only its options, not MoSA's (a misspelt `modules`)
            valid = (set(self.option_names()) - {"base_options"}) | base_names
            raise AdapterError(f"mosa: unknown option(s) {unknown}. Valid options: {sorted(valid)} (MoSA's own "
                               f"and those of its base, {self.base}).")
        if options.get("drop_layers", 0) != 0 or options.get("drop_training", "fixed") != "fixed":
            raise AdapterError("mosa: AdapterDrop (drop_layers / drop_training) is not supported with MoSA: its "
                               "consistency forwards need one draw per batch copy; attach the base adapter alone "
                               f"({self.base}, drop_layers=...) or restrict MoSA with `layers`.")
        for name in ("targets", "exclude", "layers"):
            if getattr(self, name) is not None:
                options[name] = getattr(self, name)
        self._base = make_config(self.base, **options)
        self.take_facts_of(self._base)  # this config's facts are its base's; the class keeps the default base's

    @property
    def base_config(self) -> AdapterConfig:
        return self._base

    def sites(self, model: nn.Module, placement: Placement) -> list[Site]:
        return self._base.sites(model, placement)

    def build(self, site: Site, model: nn.Module, placement: Placement) -> Adapter:
        """The base's module at this site, with the chosen projections replaced by SplitLinear layers."""
        adapter = self._base.build(site, model, placement)
        if site.target == NORM_TARGET:  # a norm the base trains beside its adapter (train_norms): not split
            return adapter
        points = getattr(adapter, "split_points", None)
        if not points:
            raise AdapterError(f"mosa: the {self.base} module has no down/up projections to split.")
        for point in SPLITS[self.split]:
            child = points[point]
            layer = SplitLinear(getattr(adapter, child), self.modules, f"{site.path}:{child}", INIT[point], self.seed)
            setattr(adapter, child, layer)
        return adapter

    def objective(self) -> ConsistencyObjective | None:
        if not self.consistency and not self.additional:
            return None
        return ConsistencyObjective(additional=float(self.additional), consistency=float(self.consistency))

    def saved_as(self) -> AdapterConfig:
        return self._base


__all__ = ["MosaConfig"]
