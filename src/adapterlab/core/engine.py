"""The adapter engine: place adapter modules at sites, switch them, merge them, count parameters.

Adapter modules live in the model tree (a ModuleDict named `adapterlab` on each host layer, keyed by
adapter name) so that `state_dict`, `.to()` and optimizers see them; forward hooks on the host layers
run them. Base weights and module classes stay as they are. What adapters a model carries is kept
on the model itself (`model.adapterlab_configs`, `model.adapterlab_active`), never globally.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from torch import nn

from ..errors import AdapterError, NotMergeableError
from .adapter import Adapter, check_adapter_dtype, keep_dtype
from .architectures import Architecture
from .composition import check_active, check_attachable, check_not_member, forget_source, is_composing
from .config import AdapterConfig, facts_of
from .layers import building_on_meta
from .registry import METHODS, config_class, make_config
from .row_calls import install_routing
from .row_routing import routing_of
from .shared_input import input_groups
from .shared_params import drop_shared, shared_of, shared_state, store_shared
from .site_hooks import HOST_ATTR, install_hooks, placed, sync_site_hooks, track_gates
from .sites import Placement, Site
from .stochastic import track_model_calls


def adapter_names(model: nn.Module) -> list[str]:
    """Names of the adapters attached to `model`, in the order they were attached."""
    return list(getattr(model, "adapterlab_configs", {}))


def get_config(model: nn.Module, name: str = "default") -> AdapterConfig:
    configs = getattr(model, "adapterlab_configs", {})
    if name not in configs:
        raise AdapterError(f"No adapter named {name!r} on this model; it has {list(configs) or 'none'}.")
    return configs[name]


def _sites_for(model: nn.Module, config: AdapterConfig, placement: Placement) -> list[Site]:
    site_kinds = facts_of(config).site_kinds
    if site_kinds == ("model",):
        return [Site("model", "", "", config.method)]
    sites = config.sites(model, placement)
    bad = [s for s in sites if s.kind not in site_kinds]
    if bad:
        raise AdapterError(
            f"{config.method} cannot be placed at {bad[0].kind} site {bad[0].target!r}; it takes "
            f"{' or '.join(site_kinds)} targets (e.g. logical q k v o up gate down or module names)."
        )
    return sites


def _host(model: nn.Module, site: Site) -> nn.Module:
    return model if site.kind == "model" else model.get_submodule(site.path)


def attach(
    model: nn.Module,
    method: str | AdapterConfig,
    name: str = "default",
    *,
    architecture: Architecture | dict[str, Any] | None = None,
    adapter_dtype: str = "float32",
    fuse_inputs: bool = False,
    **options: Any,
) -> nn.Module:
    """Place adapter `method` (a registered name with options, or a config object) on `model` in place.

    Every base parameter is frozen; the new adapter becomes the only active one. Returns `model`.
    adapter_dtype: "float32" keeps adapters over a float16/bfloat16 base in float32 (as PEFT's
    autocast_adapter_dtype; inputs are cast to the adapter and results back to the base dtype), "base"
    gives them the base layers' dtype. fuse_inputs: compute the down-projections of this adapter's modules that
    read one input (q, k, v; gate, up) as one matmul (`core/shared_input.py`; same outputs up to rounding).
    """
    check_adapter_dtype(adapter_dtype)
    config = make_config(method, **options)
    if not isinstance(name, str) or not name.isidentifier():
        raise AdapterError(f"Adapter name {name!r} must be a Python identifier, e.g. 'default' or 'math_lora'.")
    configs: dict[str, AdapterConfig] = getattr(model, "adapterlab_configs", {})
    if name in configs:
        raise AdapterError(f"An adapter named {name!r} is already attached; pick another name or detach it first.")
    holder = next((a._name for _, _, a in placed(model) if a.changes_base), None)
    if holder is not None:
        raise AdapterError(f"Adapter {holder!r} changed the base weights when it was attached (init_lora_weights pissa "
                           "or olora), so a new adapter would run on its residual model; detach it first, or "
                           "merge_and_unload it and attach to the merged model.")
    if not isinstance(fuse_inputs, bool):
        raise AdapterError(f"fuse_inputs must be True or False, got {fuse_inputs!r}.")
    if is_composing(config):  # its members must be attached; it records the folders they came from
        config = check_attachable(model, config)
    modules, placement = _build(model, config, architecture)
    if placement.shared is not None:  # parameters all the sites share: once in the model tree (shared_params.py)
        keep_dtype(placement.shared, adapter_dtype)
        store_shared(model, name, placement.shared)
    if fuse_inputs:
        input_groups([site for site, _ in modules], [adapter for _, adapter in modules], placement)
    routing = routing_of(model)
    for site, adapter in modules:
        keep_dtype(adapter, adapter_dtype)
        adapter.train(model.training)  # an adapter added to a model in eval mode must not run dropout
        host = _host(model, site)
        if HOST_ATTR not in host._modules:
            host.add_module(HOST_ATTR, nn.ModuleDict())
        host._modules[HOST_ATTR][name] = adapter
        gate = config.gate(site, name, placement)  # a method's per-forward gate (AdapterDrop), or None
        if gate is not None:
            adapter.gate = gate
            gate.train(model.training)
        adapter._name, adapter._routing = name, routing
        adapter._hook_handles, adapter._hooks_on = install_hooks(model, site, adapter), True
        adapter._site = site
        adapter._install_seq = model.adapterlab_installs = getattr(model, "adapterlab_installs", 0) + 1
        adapter.on_attach(host)
    model.adapterlab_configs = {**configs, name: config}
    # mixed-adapter batches (adapter_names=): their pre-hook before, their clearing hook after every other
    model.adapterlab_guard = install_routing(model, getattr(model, "adapterlab_guard", None))
    routing.forget()
    track_gates(model)
    track_model_calls(model)  # stochastic methods (MoSA) count model calls as steps outside a draw_context
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    set_active(model, name)
    return model


def _build(model: nn.Module, config: AdapterConfig,
           architecture: Architecture | dict[str, Any] | None) -> tuple[list[tuple[Site, Adapter]], Placement]:
    """(site, adapter module) pairs for `config` on `model`, and the placement they were built for; all built
    before the model is touched, every build seeing the one resolved architecture, all the sites and the adapter's
    shared module (`placement.shared`, built first). They are built in the model's module order, as PEFT creates its
    layers, so that one torch seed draws the same initial values."""
    placement = Placement(model, architecture)
    placement.sites = sites = _sites_for(model, config, placement)
    placement.shared = config.build_shared(model, placement)
    rank = {name: i for i, (name, _) in enumerate(model.named_modules())}
    built: dict[int, Adapter] = {}
    for i in sorted(range(len(sites)), key=lambda i: rank.get(sites[i].path, -1)):
        built[i] = config.build(sites[i], model, placement)
    return [(site, built[i]) for i, site in enumerate(sites)], placement


def planned_shapes(model: nn.Module, config: AdapterConfig,
                   architecture: Architecture | dict[str, Any] | None = None) -> dict[str, tuple[int, ...]]:
    """The shape of every entry `adapter_state_dict` would hold once `config` is attached to `model`, keyed the
    same way; the modules are built on the meta device, so nothing is allocated and the model is left as it is."""
    with building_on_meta(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a build's warnings (e.g. a bottleneck wider than its layer) come at attach
        modules, placement = _build(model, config, architecture)
    shapes = {key: tuple(tensor.shape) for key, tensor in shared_state(placement.shared)}
    for site, adapter in modules:
        path = "" if site.kind == "model" else site.path
        for key, tensor in adapter.state_dict().items():
            shapes[f"{path}.{key}" if path else key] = tuple(tensor.shape)
    return shapes


def detach(model: nn.Module, name: str = "default") -> nn.Module:
    """Remove adapter `name` (unmerging it first if it was merged)."""
    get_config(model, name)
    check_not_member(model, name, "detach")
    for _, host, adapter in list(placed(model, name)):
        adapter.unfold(host)
        adapter.on_detach(host)
        for handle in adapter._hook_handles:
            handle.remove()
        del host._modules[HOST_ATTR][name]
        if not len(host._modules[HOST_ATTR]):
            del host._modules[HOST_ATTR]
    drop_shared(model, name)
    configs = dict(model.adapterlab_configs)
    configs.pop(name)
    model.adapterlab_configs = configs
    forget_source(model, name)
    if not configs:  # the last adapter gone: the model is left as it was before attach
        for handle in model.adapterlab_guard:
            handle.remove()
        del model.adapterlab_guard
        model.__dict__.pop("adapterlab_routing", None)
    else:
        routing_of(model).forget()
    track_gates(model)
    track_model_calls(model)
    model.adapterlab_active = [n for n in model.adapterlab_active if n != name]
    return model


def set_active(model: nn.Module, names: str | list[str], trainable: bool = True) -> None:
    """Make exactly `names` active (their parameters trainable unless trainable=False); others are off.

    An adapter switched off while merged is first unmerged, so that it stops affecting the outputs.
    """
    names = [names] if isinstance(names, str) else list(names)
    known = adapter_names(model)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise AdapterError(f"Unknown adapter(s) {unknown}; this model has {known or 'none'}.")
    check_active(model, names)
    for name in known:
        for _, host, adapter in placed(model, name):
            if name not in names:
                adapter.unfold(host)
    for _, _, adapter in placed(model):
        adapter.active = adapter.trainable = False
        adapter.requires_grad_(False)
    for name in names:
        for _, _, adapter in placed(model, name):
            adapter.active, adapter.trainable = True, trainable
            adapter.requires_grad_(trainable and not adapter.merged)
    for name in known:  # shared parameters train with their adapter (none of its modules can be merged then)
        shared = shared_of(model, name)
        if shared is not None:
            shared.requires_grad_(name in names and trainable
                                  and not any(a.merged for _, _, a in placed(model, name)))
    model.adapterlab_active = names
    routing_of(model).forget()  # mixed-adapter batches plan anew (and drop their standby hooks)
    sync_site_hooks(model, force=True)  # the switched-off and merged adapters lose their hooks


def active_adapters(model: nn.Module) -> list[str]:
    return list(getattr(model, "adapterlab_active", []))


@contextlib.contextmanager
def disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run the bare base model inside the block (merged adapters are unmerged for it and re-merged after)."""
    states = [(host, a, a.active, a.merged) for _, host, a in placed(model)]
    for host, adapter, _, _ in states:
        adapter.active = False
        adapter.unfold(host)
    sync_site_hooks(model, force=True)
    try:
        yield model
    finally:
        for host, adapter, active, merged in states:
            adapter.active = active
            if merged:
                adapter.fold(host)
        sync_site_hooks(model, force=True)


def _check_mergeable(model: nn.Module, names: list[str]) -> None:
    for name in names:
        check_mergeable(get_config(model, name), name)
        check_not_member(model, name, "merge")


def check_mergeable(config: AdapterConfig | type[AdapterConfig], name: str = "default") -> None:
    """Raise NotMergeableError, with the reason and the mergeable methods, unless the method of `config` (a
    config or its class: `mergeable` is a class attribute) merges."""
    if not facts_of(config).mergeable:
        mergeable = sorted(_mergeable(m) for m in METHODS if _mergeable(m))
        raise NotMergeableError(
            f"Adapter {name!r} ({config.method}) cannot be merged into the base weights: its modules are "
            f"not linear in the layer they adapt. Mergeable methods: {', '.join(mergeable)}. Keep it "
            "unmerged for inference."
        )


def _mergeable(method: str) -> str:
    """The method's name where it merges, with the options it needs for that where it merges only with some
    ("mosa with base=lora"); "" where it does not merge."""
    facts = facts_of(config_class(method))
    return method if facts.mergeable else f"{method} with {facts.mergeable_when}" if facts.mergeable_when else ""


def merge(model: nn.Module, names: str | list[str] | None = None) -> nn.Module:
    """Fold the active (or named) adapters into the base weights; outputs stay the same."""
    names = active_adapters(model) if names is None else ([names] if isinstance(names, str) else list(names))
    _check_mergeable(model, names)
    done: list[tuple[nn.Module, Adapter]] = []
    try:
        for name in names:
            for _, host, adapter in placed(model, name):
                if not adapter.merged:
                    adapter.fold(host)
                    done.append((host, adapter))
    except Exception:  # all or nothing: a module that refuses (e.g. bitfit on a bias-free layer) undoes the rest
        for host, adapter in reversed(done):
            adapter.unfold(host)
        raise
    finally:
        sync_site_hooks(model, force=True)  # a merged adapter has no hooks: merged costs what the base costs
    return model


def unmerge(model: nn.Module, names: str | list[str] | None = None) -> nn.Module:
    """Take merged adapters (all of them, or the named ones) back out of the base weights, restoring them."""
    if names is None:
        names = list(dict.fromkeys(n for n in adapter_names(model) for _, _, a in placed(model, n) if a.merged))
    names = [names] if isinstance(names, str) else list(names)
    _check_mergeable(model, names)
    for name in names:
        for _, host, adapter in placed(model, name):
            adapter.unfold(host)
    sync_site_hooks(model, force=True)
    return model


def check_inputs(model: nn.Module, names: set[str]) -> None:
    """Refuse model inputs (by name, e.g. a training example's keys) that an attached adapter cannot take, before
    a run writes anything (prompt tokens on a model given an attention mask that would not cover them)."""
    for _, _, adapter in placed(model):
        adapter.check_inputs(set(names))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; total includes adapter parameters. Works on meta models."""
    trainable = total = 0
    seen: set[int] = set()
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return trainable, total
