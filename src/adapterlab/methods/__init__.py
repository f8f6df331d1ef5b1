"""Adapter methods: one file each, a config dataclass and the module it places at a site."""
