"""Resolving an adapter's targets to sites: the places in a model where its modules go.

A target is a module-name suffix (``"q_proj"``, matched like PEFT), a logical projection
(``q k v o up gate down``, or ``qkv``), a group of projections (``mlp_in``: the MLP's input projections,
up and gate where the family has one), or a sublayer (``attn``, ``mlp``). Logical names go through
the model family's row in `architectures`, or `discovery` for families without one. Targets may also be
one regex or "all-linear", less an `exclude` (PEFT's forms, `target_forms`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from torch import nn

from .architectures import ARCHITECTURES, GROUPS, LOGICAL_PROJECTIONS, SUBLAYERS, Architecture
from .discovery import discover
from ..errors import AdapterError, TargetNotFoundError
from .layers import is_linear
from .target_forms import ADAPTER_SLOT, ALL_LINEAR, all_linear_paths, excludes, regex_paths


@dataclass(frozen=True)
class Site:
    """One place for one adapter module.

    kind: "module" (a single layer: the adapter sees its input and output), "sublayer" (from the
    input of `entry` to the output of `path`), or "model" (the whole model's forward call).
    """

    kind: str
    path: str
    entry: str
    target: str
    layer: int | None = None


def model_type_of(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) or type(model).__name__


def architecture_of(model: nn.Module, override: Architecture | dict[str, Any] | None = None) -> Architecture:
    """The model's Architecture: the user's override, the table row, or what discovery finds (a row of a family
    built either way, pre-norm or post-norm, as the model's config has it)."""
    config = getattr(model, "config", None)
    if isinstance(override, Architecture):
        return override.for_config(config)
    model_type = model_type_of(model)
    if isinstance(override, dict):
        valid = [f for f in Architecture.__dataclass_fields__ if f != "name"]
        unknown = sorted(set(override) - set(valid))
        if unknown:
            raise AdapterError(f"architecture: unknown field(s) {unknown}; valid fields are {valid}.")
        base = ARCHITECTURES.get(model_type) or discover(model, model_type) or Architecture(model_type, blocks="")
        fields = {"name": f"{model_type}+override", **override}  # the user's fields win over the model's variant
        return Architecture(**{**base.for_config(config).__dict__, **fields}).for_config(config)
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type].for_config(config)
    found = discover(model, model_type)
    if found is None:
        raise AdapterError(
            f"Model type {model_type!r} has no architecture row and no transformer blocks were found. "
            "Pass targets as module-name suffixes (e.g. targets=['q_proj', 'v_proj']) or describe the "
            "model with architecture={'blocks': ..., 'q': ..., ...}."
        )
    return found


def block_paths(model: nn.Module, arch: Architecture) -> list[str]:
    """Full names of the model's blocks, in order. `blocks` names one ModuleList, or, for models built in stages
    (Swin), "stages.*.blocks": the block lists of every stage, one after the other."""
    outer, _, inner = arch.blocks.partition(".*.")
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (name == outer or name.endswith("." + outer)):
            if not inner:
                return [f"{name}.{i}" for i in range(len(module))]
            lists = [(f"{name}.{i}.{inner}", _child_list(stage, inner)) for i, stage in enumerate(module)]
            if all(blocks is not None for _, blocks in lists):
                return [f"{path}.{j}" for path, blocks in lists for j in range(len(blocks))]
    raise AdapterError(
        f"No block list named {arch.blocks!r} in this {model_type_of(model)} model; pass "
        "architecture={'blocks': '<name of the ModuleList of blocks>', ...} (or 'stages.*.blocks' for blocks "
        "inside stages)."
    )


def _child_list(module: nn.Module, path: str) -> nn.ModuleList | None:
    """The ModuleList at `path` inside `module`, or None."""
    try:
        found = module.get_submodule(path)
    except AttributeError:
        return None
    return found if isinstance(found, nn.ModuleList) else None


def _needs_architecture(targets: list[str], layers: list[int] | None) -> bool:
    logical = set(LOGICAL_PROJECTIONS) | set(SUBLAYERS) | set(GROUPS) | {"qkv"}
    return layers is not None or any(t in logical for t in targets)


def _expand_fused(targets: list[str], arch: Architecture, defaults: bool = False) -> list[str]:
    """Map q/k/v onto the fused projection (all three or none), or expand 'qkv' where unfused.

    A method's default targets (`defaults`) that name part of a fused projection take the whole of it,
    as PEFT's per-family defaults do (e.g. LoRA's q,v become GPT-2's c_attn).
    """
    qkv_asked = [t for t in targets if t in ("q", "k", "v")]
    rest = [t for t in targets if t not in ("q", "k", "v", "qkv")]
    if arch.qkv:
        if qkv_asked and len(set(qkv_asked)) < 3 and not defaults:
            raise AdapterError(
                f"{arch.name} fuses q, k and v into one projection ({arch.qkv!r}); adapting "
                f"only {sorted(set(qkv_asked))} is not supported. Target all of q,k,v (or 'qkv') to adapt "
                "the fused projection as a whole."
            )
        return (["qkv"] if qkv_asked or "qkv" in targets else []) + rest
    if "qkv" in targets:
        qkv_asked = ["q", "k", "v"]
    return list(dict.fromkeys(qkv_asked)) + rest


def _logical_sites(model: nn.Module, arch: Architecture, target: str, layers: list[int] | None) -> list[Site]:
    blocks = block_paths(model, arch)
    chosen = range(len(blocks)) if layers is None else layers
    for i in chosen:
        if not 0 <= i < len(blocks):
            raise AdapterError(f"layers: block {i} does not exist; this model has blocks 0..{len(blocks) - 1}.")
    if target in GROUPS:
        members = [p for p in GROUPS[target] if arch.projection(p)]
        if not members:
            raise TargetNotFoundError(f"{arch.name} has none of the projections of {target!r} ({GROUPS[target]}).")
        found = [s for p in members for s in _logical_sites(model, arch, p, layers)]
        return sorted(found, key=lambda s: s.layer)
    sites = []
    for i in chosen:
        block = blocks[i]
        if target in SUBLAYERS:
            entry = arch.attn_entry if target == "attn" else arch.mlp_entry
            exit_ = arch.o if target == "attn" else arch.down
            if entry is None or exit_ is None:
                raise TargetNotFoundError(
                    f"The {arch.name} architecture row does not say where the {target} sublayer starts and ends; "
                    "pass architecture={...} with its projections, or target modules by name."
                )
            sites.append(Site("sublayer", f"{block}.{exit_}", f"{block}.{entry}", target, i))
        else:
            rel = arch.projection(target)
            if rel is None:
                raise TargetNotFoundError(
                    f"{arch.name} has no {target!r} projection. It has: "
                    f"{[p for p in (*LOGICAL_PROJECTIONS, 'qkv') if arch.projection(p)]}."
                )
            sites.append(Site("module", f"{block}.{rel}", f"{block}.{rel}", target, i))
    return sites


def _suffix_sites(model: nn.Module, target: str, layer_of: dict[str, int], layers: list[int] | None) -> list[Site]:
    sites = []
    for name, _ in model.named_modules():
        if _inside_adapter(name):
            continue
        if name == target or name.endswith("." + target):
            layer = next((i for prefix, i in layer_of.items() if name.startswith(prefix + ".")), None)
            if layers is None or layer in layers:
                sites.append(Site("module", name, name, target, layer))
    return sites


def _inside_adapter(name: str) -> bool:
    """Whether a module path lies inside an adapter slot (adapters are never targets themselves)."""
    return ADAPTER_SLOT in name.split(".")


def linear_suffixes(model: nn.Module) -> list[str]:
    """Distinct last name parts of the model's linear layers, for error messages."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if is_linear(m) and not _inside_adapter(name)})


def resolve_sites(
    model: nn.Module,
    targets: list[str] | str,
    layers: list[int] | None = None,
    architecture: Architecture | dict[str, Any] | None = None,
    defaults: bool = False,
    exclude: list[str] | str | None = None,
) -> list[Site]:
    """Every site named by `targets`; an error for any target that names nothing.

    defaults=True marks a method's default targets, which fit themselves to the family: partial q/k/v
    take a fused projection whole, and logical projections the family lacks (gate on BERT) are skipped.
    """
    return Placement(model, architecture).resolve(targets, layers, defaults, exclude)


def text_config(model: nn.Module) -> Any:
    """The model's (text) config, where layer counts and head sizes live."""
    config = getattr(model, "config", None)
    if config is None:
        raise AdapterError(f"{type(model).__name__} has no `.config`; virtual-token methods need a transformers model.")
    return config.get_text_config() if hasattr(config, "get_text_config") else config


class Placement:
    """What `attach` resolves once for one adapter and hands to every `build`: the model's architecture
    (the user's override honoured) and all the adapter's sites, so that no method re-resolves on its own.

    The architecture is looked up on first use, so that module-name targets on a model without one work.
    """

    def __init__(self, model: nn.Module, override: Architecture | dict[str, Any] | None = None) -> None:
        self._model = model
        self.override = override
        self.sites: list[Site] = []
        self.shared: nn.Module | None = None  # the adapter's `build_shared` module, handed to every build

    @functools.cached_property
    def architecture(self) -> Architecture:
        """The override, the family's row or what discovery finds; an AdapterError when there is none."""
        return architecture_of(self._model, self.override)

    @functools.cached_property
    def blocks(self) -> list[str]:
        """The paths of the model's transformer blocks, in order (AdapterDrop counts them)."""
        return block_paths(self._model, self.architecture)

    def resolve(self, targets: list[str] | str, layers: list[int] | None = None, defaults: bool = False,
                exclude: list[str] | str | None = None) -> list[Site]:
        """Every site named by `targets` (see `resolve_sites`; a regex or "all-linear" names module sites, see
        `target_forms`), with this placement's architecture, less what `exclude` takes out."""
        if isinstance(targets, str):
            sites = self._pattern_sites(targets, layers)
        else:
            sites = self._named_sites(targets, layers, defaults)
        if exclude is None:
            return sites
        out = self.exclude(sites, exclude)
        if not out:
            raise TargetNotFoundError(f"exclude {exclude!r} takes out every one of the {len(sites)} layers that "
                                      f"targets {targets!r} name; narrow `exclude` or widen `targets`.")
        return out

    def exclude(self, sites: list[Site], exclude: list[str] | str) -> list[Site]:
        """`sites` less those `exclude` names (a regex matched in full, or names: module-name suffixes or logical
        names); an error where it takes out nothing, since an exclude that does nothing is a slip."""
        if isinstance(exclude, str):
            out = [s for s in sites if not excludes(s.path, exclude)]
        else:
            logical = [e for e in exclude if _needs_architecture([e], None)]
            paths = {s.path for s in self._named_sites(logical, None, False)} if logical else set()
            out = [s for s in sites if s.path not in paths and not excludes(s.path, exclude)]
        if len(out) == len(sites):
            raise TargetNotFoundError(f"exclude {exclude!r} takes out none of the layers the targets name "
                                      f"({[s.path for s in sites][:4]}...); fix `exclude` or drop it.")
        return out

    def _pattern_sites(self, pattern: str, layers: list[int] | None) -> list[Site]:
        """Module sites of a regex (matched in full against module names) or of "all-linear"."""
        model = self._model
        paths = all_linear_paths(model) if pattern == ALL_LINEAR else regex_paths(model, pattern)
        layer_of = {}
        if layers is not None or self.override:
            layer_of = {path: i for i, path in enumerate(block_paths(model, self.architecture))}
        sites = []
        for path in paths:
            layer = next((i for prefix, i in layer_of.items() if path.startswith(prefix + ".")), None)
            if layers is None or layer in layers:
                sites.append(Site("module", path, path, pattern, layer))
        if not sites:
            raise TargetNotFoundError(
                f"Target {pattern!r} matches no module of this {model_type_of(model)} model"
                f"{' in blocks ' + str(layers) if layers is not None else ''}; it is matched in full against module "
                f"names such as {[n for n, m in model.named_modules() if is_linear(m)][:3]}."
            )
        return sites

    def _named_sites(self, targets: list[str], layers: list[int] | None, defaults: bool) -> list[Site]:
        """Sites of a list of logical names and module-name suffixes."""
        model = self._model
        needed = _needs_architecture(targets, layers) or bool(self.override)
        arch = self.architecture if needed else None
        layer_of: dict[str, int] = {}
        if arch is not None:
            layer_of = {path: i for i, path in enumerate(block_paths(model, arch))}
            targets = _expand_fused(targets, arch, defaults)
            if defaults:
                targets = [t for t in targets if t not in LOGICAL_PROJECTIONS or arch.projection(t)] or targets
        sites: dict[str, Site] = {}
        for target in targets:
            if arch is not None and (target in LOGICAL_PROJECTIONS or target in SUBLAYERS or target in GROUPS
                                     or target == "qkv"):
                found = _logical_sites(model, arch, target, layers)
            else:
                found = _suffix_sites(model, target, layer_of, layers)
            if not found:
                raise TargetNotFoundError(
                    f"Target {target!r} matches no module of this {model_type_of(model)} model. Use a logical name "
                    f"(q k v o up gate down mlp_in attn mlp) or a module-name suffix; its linear layers are named "
                    f"{linear_suffixes(model)}."
                )
            for site in found:
                other = sites.setdefault(site.path, site)
                if (other.kind, other.entry) != (site.kind, site.entry):
                    raise AdapterError(
                        f"Targets {other.target!r} and {site.target!r} both place an adapter at {site.path!r} "
                        f"({other.kind} and {site.kind} sites); an adapter has one module per layer, so keep one "
                        "of them or attach the other as a second adapter."
                    )
        return list(sites.values())
