"""Compacter and Compacter++ (Karimi Mahabadi et al., NeurIPS 2021): bottleneck adapters whose down and up
projections are PHM layers (`phm.py`), H = sum_k A_k (x) W_k, with the rules A shared by every layer of the adapter
and each W_k of rank 1. Defaults follow AdapterHub's `CompacterConfig` / `CompacterPlusPlusConfig`.

* `compacter`: Houlsby's placement (after the attention and the MLP sublayer of each block, `houlsby`).
* `compacterpp` (Compacter++): after the MLP only (`pfeiffer`); "compacter++" would need quoting in shells,
  escaping in regexes (pytest -k) and URLs, so the registry key spells it out.

Both: bottleneck = adapted width // reduction_factor (768 // 32 = 24 on BERT-base), GELU, bias on both PHM layers,
phm_dim 4. The rules live once per attached adapter in the model (`core/shared_params.py`), saved beside the
per-layer weights. Not mergeable: the activation makes the adapter nonlinear.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..core.config import one_of, positive_int
from ..core.layers import reference_tensor
from ..core.option_help import documented, option_field
from ..core.sites import Placement, Site
from ..errors import AdapterError
from .block_norms import NORM_TARGET
from .bottleneck import HoulsbyConfig, PfeifferConfig, SeriesConfig
from .bottleneck_module import BottleneckAdapter
from .phm import RULE_INITS, W_INITS, PHMLayer, PHMShared

REDUCTION = 32  # AdapterHub's reduction_factor for both configs


@dataclass
class CompacterOptions(SeriesConfig):
    """The options Compacter adds to a series bottleneck adapter (AdapterHub's BnConfig phm_* fields)."""

    peft_type = None  # PEFT has no Compacter: neither imported nor exported

    size: int | None = option_field(None, "the bottleneck width; unset: the adapted width // reduction_factor")
    reduction_factor: int = option_field(REDUCTION, "the adapted width divided by this is the bottleneck width "
                                         "(when size is unset)")
    activation: str = "gelu"
    bias: bool = option_field(True, "a bias in the down and up PHM layers (AdapterHub's phm_bias)")
    init: str = option_field("bert", "bert: the PHM layers keep their own init (phm_c_init, "
                             "hypercomplex_nonlinearity), as AdapterHub's init_weights='bert'; zero: also the up "
                             "layer's weight zero, so the model is unchanged at init")
    phm_dim: int = option_field(4, "n, the number of Kronecker products summed in each PHM layer; widths and the "
                                "bottleneck must be multiples of it")
    phm_rank: int = option_field(1, "the rank of each factorized weight block W_k (factorized_phm_W)")
    factorized_phm_W: bool = option_field(True, "each weight block W_k as a product of (in/n x rank) and "
                                          "(rank x out/n) factors")
    shared_W_phm: bool = option_field(False, "one down and one up weight shared by every layer (all sites must "
                                      "adapt one width)")
    shared_phm_rule: bool = option_field(True, "one set of rules A shared by every PHM layer of the adapter")
    factorized_phm_rule: bool = option_field(False, "each rule A_k as a product of (n x 1) and (1 x n) factors")
    learn_phm: bool = option_field(True, "train the rules A (else they stay at their random init, saved as buffers)")
    phm_c_init: str = option_field("normal", "the rules' init: normal (N(0, phm_init_range)) or uniform (U(-1, 1))")
    phm_init_range: float = option_field(1e-4, "the std of the rules' normal init, and of the weights' with "
                                         "hypercomplex_nonlinearity=normal")
    hypercomplex_nonlinearity: str = option_field("glorot-uniform", "the weight blocks' init: glorot-uniform, "
                                                  "glorot-normal or normal (N(0, phm_init_range)), per 2-D block",
                                                  paper="AdapterHub draws glorot-normal whatever the value")

    def validate(self) -> None:
        super().validate()
        for name in ("phm_dim", "phm_rank", "reduction_factor"):
            positive_int(self.method, name, getattr(self, name))
        for flag in ("factorized_phm_W", "shared_W_phm", "shared_phm_rule", "factorized_phm_rule", "learn_phm"):
            if not isinstance(getattr(self, flag), bool):
                raise AdapterError(f"{self.method}: `{flag}` must be true or false, got {getattr(self, flag)!r}.")
        one_of(self.method, "phm_c_init", self.phm_c_init, RULE_INITS)
        one_of(self.method, "hypercomplex_nonlinearity", self.hypercomplex_nonlinearity, W_INITS)
        if not float(self.phm_init_range) > 0:
            raise AdapterError(f"{self.method}: `phm_init_range` must be positive, got {self.phm_init_range!r}.")

    def check_size(self) -> None:
        if self.size is not None:
            positive_int(self.method, "size", self.size)
            if self.reduction_factor != REDUCTION:
                raise AdapterError(f"{self.method}: both `size` ({self.size}) and `reduction_factor` "
                                   f"({self.reduction_factor}) were given; pass one of them.")

    def bottleneck(self, width: int, where: str) -> int:
        """The bottleneck width for an adapted `width`, both checked to be multiples of phm_dim."""
        size = self.size if self.size is not None else width // self.reduction_factor
        for what, value in (("adapted width", width), ("bottleneck width", size)):
            if value < 1 or value % self.phm_dim:
                raise AdapterError(
                    f"{self.method}: the {what} at {where!r} is {value}, not a positive multiple of phm_dim="
                    f"{self.phm_dim}; pass a size (or reduction_factor) and phm_dim that divide it, e.g. "
                    f"size={max(self.phm_dim, width // self.reduction_factor // self.phm_dim * self.phm_dim)}.")
        return size

    def build_shared(self, model: nn.Module, placement: Placement) -> PHMShared | None:
        """The rules (and with shared_W_phm the down and up weights) every PHM layer of this adapter uses."""
        sites = [s for s in placement.sites if s.target != NORM_TARGET]
        if not sites or not (self.shared_phm_rule or self.shared_W_phm):
            return None
        shapes = None
        if self.shared_W_phm:
            widths = {self.series_width(s, model, placement)[0] for s in sites}
            if len(widths) > 1:
                raise AdapterError(f"{self.method}: shared_W_phm shares one weight across layers, but the sites "
                                   f"adapt widths {sorted(widths)}; set shared_W_phm=false or target one width.")
            width = widths.pop()
            size = self.bottleneck(width, sites[0].path)
            shapes = {"down": (width, size), "up": (size, width)}
        ref = reference_tensor(model.get_submodule(sites[0].path))
        return PHMShared(self, self.shared_phm_rule, shapes, ref.device, ref.dtype)

    def build_adapter(self, site: Site, model: nn.Module, placement: Placement) -> BottleneckAdapter:
        width, where = self.series_width(site, model, placement)
        size = self.bottleneck(width, site.path)
        ref = reference_tensor(model.get_submodule(site.path))
        shared = placement.shared
        rule = shared.part("rule") if shared is not None else None
        kinds = dict(device=ref.device, dtype=ref.dtype)
        down = PHMLayer(width, size, self, self.bias, rule, shared.part("W_down") if shared else None, **kinds)
        up = PHMLayer(size, width, self, self.bias, rule, shared.part("W_up") if shared else None, **kinds)
        return BottleneckAdapter(width, width, self, where, ref.device, ref.dtype, projections=(down, up))


@documented
@dataclass
class CompacterConfig(CompacterOptions, HoulsbyConfig):
    """Compacter: PHM bottleneck adapters after the attention and the MLP sublayer of each block (Houlsby's places)."""

    method = "compacter"


@documented
@dataclass
class CompacterPlusPlusConfig(CompacterOptions, PfeifferConfig):
    """Compacter++: PHM bottleneck adapters after the MLP sublayer of each block only (Pfeiffer's place)."""

    method = "compacterpp"
