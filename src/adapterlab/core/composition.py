"""Adapters made of other attached adapters (AdapterFusion; a later Stack or Average).

A composing config (`Composing`) names its members, adapters already attached to the model. It is placed at the
members' sites, and at each site its module is handed the members' modules there (`members_at`), which it runs
itself. The members stay attached, frozen and switched off: their own hooks never run them while the composer is
active, and they cannot be switched on beside it, detached or merged while it is attached. A member may be named
with the folder it was loaded from ("NAME=PATH"), which a saved composer records so that loading it can load them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ..errors import AdapterError
from .option_help import option_field
from .site_hooks import HOST_ATTR, placed
from .sites import Site

if TYPE_CHECKING:
    from .adapter import Adapter
    from .config import AdapterConfig
    from .sites import Placement


def split_member(entry: str) -> tuple[str, str | None]:
    """'NAME=PATH' -> (NAME, PATH); 'NAME' -> (NAME, None)."""
    name, _, path = str(entry).partition("=")
    return name.strip(), (path.strip() or None)


@dataclasses.dataclass
class Composing:
    """Mixin of the configs whose modules run other attached adapters (their `adapters`) at the same sites."""

    adapters: list[str] | None = option_field(None, "the attached adapters it composes, comma-separated: NAME, or "
                                              "NAME=PATH to load the adapter saved in PATH (frozen) under NAME first")

    def check_members(self) -> None:
        """Refuse an empty or repeated member list (configs call it from `validate`)."""
        if isinstance(self.adapters, str):
            self.adapters = [a.strip() for a in self.adapters.split(",") if a.strip()]
        if not self.adapters:
            raise AdapterError(f"{self.method}: name the adapters it composes, e.g. adapters=['a', 'b'] or "
                               "--fuse a=PATH,b=PATH.")
        names = self.member_names()
        bad = [n for n in names if not n.isidentifier()]
        if bad:
            raise AdapterError(f"{self.method}: member {bad[0]!r} is not an adapter name; write NAME or NAME=PATH.")
        if len(set(names)) != len(names):
            raise AdapterError(f"{self.method}: adapters {names} name one adapter twice; name each once.")

    def member_names(self) -> list[str]:
        return [split_member(a)[0] for a in self.adapters or []]

    def member_paths(self) -> dict[str, str | None]:
        """Each member's name -> the folder it is loaded from, or None (it must be attached already)."""
        return dict(split_member(a) for a in self.adapters or [])

    def with_paths(self, known: dict[str, str]) -> AdapterConfig:
        """A copy naming, for each member without a path, the folder it was loaded from where `known` has one."""
        given = self.member_paths()
        entries = [f"{n}={p}" if p else n for n, p in ((n, p or known.get(n)) for n, p in given.items())]
        return dataclasses.replace(self, adapters=entries)

    def check_member(self, name: str, module: Adapter) -> None:
        """Refuse a member module this composer cannot run (the method says why); default: any."""

    def sites(self, model: nn.Module, placement: Placement) -> list[Site]:
        """The members' sites, which must be the same for every member."""
        if self.targets is not None or self.layers is not None:
            raise AdapterError(f"{self.method} sits where its members sit; drop `targets` and `layers`.")
        first, *others = self.member_names()
        sites = member_sites(model, first)
        for other in others:
            if set(member_sites(model, other)) != set(sites):
                raise AdapterError(f"{self.method}: members {first!r} and {other!r} sit at different places "
                                   f"({len(sites)} vs {len(member_sites(model, other))} sites); compose adapters "
                                   "of the same targets and layers.")
        return sites

    def build(self, site: Site, model: nn.Module, placement: Placement) -> Adapter:
        members = members_at(model, self.member_names(), site)
        for member_name, module in zip(self.member_names(), members):
            self.check_member(member_name, module)
        return self.build_composer(site, members, model, placement)

    def build_composer(self, site: Site, members: list[Adapter], model: nn.Module, placement: Placement) -> Adapter:
        """The composing module at `site`, given the members' modules there (in member order)."""
        raise NotImplementedError


def is_composing(config: Any) -> bool:
    return isinstance(config, Composing)


def member_sites(model: nn.Module, name: str) -> list[Site]:
    return [adapter._site for _, _, adapter in placed(model, name)]


def members_at(model: nn.Module, names: list[str], site: Site) -> list[Adapter]:
    """The module of each adapter in `names` at `site` (which every one of them must have)."""
    slot = model.get_submodule(site.path)._modules.get(HOST_ATTR) or {}
    found = []
    for name in names:
        module = slot[name] if name in slot else None
        if module is None or module._site != site:
            raise AdapterError(f"Adapter {name!r} has no module at {site.path!r}; compose adapters placed alike.")
        found.append(module)
    return found


def check_attachable(model: nn.Module, config: AdapterConfig) -> AdapterConfig:
    """Refuse members that are not attached or compose themselves; the config with their known source folders."""
    configs = getattr(model, "adapterlab_configs", {})
    for member in config.member_names():
        if member not in configs:
            path = config.member_paths()[member]
            how = f"load it first (adapterlab.load_adapter(model, {path!r}, {member!r}))" if path else \
                f"attach or load it first (adapterlab.load_adapter(model, PATH, {member!r}))"
            raise AdapterError(f"{config.method} composes adapter {member!r}, which is not attached; {how}.")
        if any(module.merged for _, _, module in placed(model, member)):
            raise AdapterError(f"{config.method}: member {member!r} is merged into the base weights; unmerge it "
                               "first (adapterlab.unmerge(model)).")
        if is_composing(configs[member]):
            raise AdapterError(f"{config.method}: member {member!r} composes adapters itself; compose plain adapters.")
    return config.with_paths(getattr(model, "adapterlab_sources", {}))


def composers_of(model: nn.Module, member: str) -> list[str]:
    """The attached composers that run adapter `member`."""
    return [n for n, c in getattr(model, "adapterlab_configs", {}).items()
            if is_composing(c) and member in c.member_names()]


def check_not_member(model: nn.Module, name: str, doing: str) -> None:
    """Refuse detaching or merging a member of an attached composer."""
    users = composers_of(model, name)
    if users:
        raise AdapterError(f"Cannot {doing} adapter {name!r}: {users[0]!r} composes it; detach {users[0]!r} first.")


def check_active(model: nn.Module, names: list[str]) -> None:
    """Refuse switching on a composer beside one of its members (the member would run twice)."""
    configs = getattr(model, "adapterlab_configs", {})
    for name in names:
        config = configs.get(name)
        if is_composing(config):
            both = [m for m in config.member_names() if m in names]
            if both:
                raise AdapterError(f"{name!r} runs its member {both[0]!r} itself; activate {name!r} alone.")


def record_source(model: nn.Module, name: str, path: Any) -> None:
    """Remember the folder adapter `name` was loaded from (absolute where it is a local folder)."""
    local = Path(path)
    where = str(local.resolve()) if local.is_dir() else str(path)
    model.adapterlab_sources = {**getattr(model, "adapterlab_sources", {}), name: where}


def forget_source(model: nn.Module, name: str) -> None:
    sources = dict(getattr(model, "adapterlab_sources", {}))
    if sources.pop(name, None) is not None:
        model.adapterlab_sources = sources


__all__ = ["Composing", "check_active", "check_attachable", "check_not_member", "composers_of", "forget_source",
           "is_composing", "members_at", "record_source", "split_member"]
