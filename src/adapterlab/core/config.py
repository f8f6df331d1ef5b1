"""The base config dataclass every adapter method extends (one dataclass per method, like PEFT)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .coerce import Mismatch, coerce, describe
from .option_help import documented, option_field
from .target_forms import target_form
from ..errors import AdapterError

if TYPE_CHECKING:
    from torch import nn

    from .adapter import Adapter, Gate
    from .sites import Placement, Site


@documented
@dataclass
class AdapterConfig:
    """Options shared by every method; each method's config class adds its own (see `option_help.py`)."""

    method: ClassVar[str] = ""
    default_targets: ClassVar[tuple[str, ...]] = ()
    mergeable: ClassVar[bool] = False
    # options under which a method that is not mergeable in general merges (MoSA: "base=lora"), for messages
    mergeable_when: ClassVar[str] = ""
    # site kinds the method can use: "module" (one layer), "sublayer" (attn/mlp), "model" (the forward call)
    site_kinds: ClassVar[tuple[str, ...]] = ("module",)
    # option values that an adapter saved before the option existed implies (its behaviour then)
    legacy_defaults: ClassVar[dict[str, Any]] = {}
    # the method adapts the task head itself (linear_probe), so training does not also train the head in full
    trains_head: ClassVar[bool] = False

    targets: list[str] | str | None = option_field(
        None, "the layers to adapt: module-name suffixes (q_proj) or logical names (q k v o up gate down attn mlp), "
        "comma-separated; or one regex matched in full against module names (.*\\.(q|v)_proj); or all-linear "
        "(every linear layer but the output head); unset: the method's default targets")
    exclude: list[str] | str | None = option_field(
        None, "layers taken out of the targets (PEFT's exclude_modules): a regex matched in full, or names "
        "(module-name suffixes or logical names), comma-separated")
    layers: list[int] | None = option_field(None, "only these block indices (0,1,2); unset: every block")

    def __post_init__(self) -> None:
        self.targets = target_form("targets", self.targets, self.method)
        self.exclude = target_form("exclude", self.exclude, self.method)
        if self.layers is not None:
            self.layers = [int(i) for i in self.layers]
        self.validate()

    def validate(self) -> None:
        """Check option values; methods override and raise AdapterError naming the option."""

    def sites(self, model: nn.Module, placement: Placement) -> list[Site]:
        """Where this adapter goes: its targets' sites. A method that also adapts layers no target names
        (BitFit's normalisation layers) extends this."""
        return placement.resolve(self.resolved_targets, self.layers, defaults=self.targets is None,
                                 exclude=self.exclude)

    def build(self, site: Site, model: nn.Module, placement: Placement) -> Adapter:
        """The adapter module for one site; must not read weight values (attach works on meta models).

        `placement` holds the model's architecture (the user's override honoured) and all the sites: use
        it rather than looking the architecture up again.
        """
        raise NotImplementedError

    def build_shared(self, model: nn.Module, placement: Placement) -> nn.Module | None:
        """Parameters every site of this adapter shares (Compacter's rules), built once per attach before the
        per-site `build`s, which find it as `placement.shared`; None (the default) where nothing is shared.
        Like `build`, it must not read weight values. See `shared_params.py` for where it lives."""
        return None

    def gate(self, site: Site, name: str, placement: Placement) -> Gate | None:
        """The gate deciding per forward whether the module at `site` of adapter `name` runs (AdapterDrop's
        skip of the lower blocks, `methods/adapterdrop.py`), or None: it always runs."""
        return None

    def take_facts_of(self, other: AdapterConfig) -> None:
        """Give this config the instance facts (`INSTANCE_FACTS`) of `other`: a wrapper (MoSA) is placed, merged and
        targeted as the method it wraps, while its class keeps those of its default base."""
        for fact in INSTANCE_FACTS:
            setattr(self, fact, getattr(other, fact))

    def objective(self) -> Any:
        """A training-loss term to use instead of the model's own loss (see `objectives.py`), or None."""
        return None

    def saved_as(self) -> AdapterConfig:
        """The config `save_adapter` writes: this one, or the plain method a trained adapter collapses into
        (MoSA saves its merged adapter as its base method). Modules that collapse provide `collapsed_state`."""
        return self

    @classmethod
    def accepted_options(cls, options: dict[str, Any]) -> set[str]:
        """Option names this method takes, given the options asked for (a wrapper adds its base's)."""
        return set(cls.option_names())

    @property
    def resolved_targets(self) -> list[str] | str:
        """The targets, or the method's defaults: a list of names, or one regex / "all-linear" (`target_forms`)."""
        if isinstance(self.targets, str):
            return self.targets
        return list(self.targets) if self.targets is not None else list(self.default_targets)

    def to_dict(self) -> dict[str, Any]:
        out = {"method": self.method}
        out.update(dataclasses.asdict(self))
        return out

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_options(cls, options: dict[str, Any], source: str | None = None) -> AdapterConfig:
        """Build from options (attach keywords, or a saved adapter_config.json named by `source`).

        Unknown names are refused with the valid ones. Each value is coerced to its field's annotated type
        where that is unambiguous ("8" -> 8 for an int, 8 -> 8.0 for a float, "q,v" -> a list), else refused
        with an AdapterError naming the option, its value, the type and the file.
        """
        where = f" in {source}" if source else ""
        known = set(cls.option_names())
        unknown = sorted(set(options) - known)
        if unknown:  # the registry adds which other methods take them (`registry.make_config`)
            raise UnknownOptionError(f"{cls.method}: unknown option(s) {unknown}{where}. Valid options: "
                                     f"{sorted(known)}.", unknown)
        hints = typing.get_type_hints(cls)
        values = {}
        for key, value in options.items():
            try:
                values[key] = coerce(value, hints[key], split_commas=True)
            except Mismatch:
                raise AdapterError(
                    f"{cls.method}: `{key}`{where} is {value!r}, but it must be {describe(hints[key])}; "
                    f"fix the value{' there' if source else ''}."
                ) from None
        try:
            return cls(**values)
        except AdapterError as exc:
            if source:  # a saved config's bad value: say which file holds it
                raise type(exc)(f"{exc} ({source})") from exc
            raise


@dataclass(frozen=True)
class MethodFacts:
    """What a method is, as the engine, merge messages and PEFT export read it (`facts_of`)."""

    method: str
    mergeable: bool
    mergeable_when: str
    site_kinds: tuple[str, ...]
    default_targets: tuple[str, ...]
    trains_head: bool
    peft_type: str | None


# the facts a config may hold for itself (a wrapper takes them from what it wraps, `take_facts_of`)
INSTANCE_FACTS = ("mergeable", "site_kinds", "default_targets")


def facts_of(config: AdapterConfig | type[AdapterConfig]) -> MethodFacts:
    """The method facts of a config, or of a config class (those its defaults give): one way for every method."""
    return MethodFacts(config.method, bool(config.mergeable), config.mergeable_when, tuple(config.site_kinds),
                       tuple(config.default_targets), bool(config.trains_head), getattr(config, "peft_type", None))


class UnknownOptionError(AdapterError):
    """Options a method does not take; `unknown` names them, so that the registry can say who takes them."""

    def __init__(self, message: str, unknown: list[str]) -> None:
        super().__init__(message)
        self.unknown = unknown


def positive_int(method: str, name: str, value: Any) -> None:
    """Raise AdapterError unless value is a positive int."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise AdapterError(f"{method}: `{name}` must be a positive integer, got {value!r}.")


def one_of(method: str, name: str, value: Any, allowed: tuple) -> None:
    """Raise AdapterError unless value is one of allowed."""
    if value not in allowed:
        raise AdapterError(f"{method}: `{name}` must be one of {list(allowed)}, got {value!r}.")


__all__ = ["AdapterConfig", "MethodFacts", "UnknownOptionError", "facts_of", "field", "positive_int", "one_of"]
