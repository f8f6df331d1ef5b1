"""Exceptions raised by adapterlab; every message names the problem and the fix."""


class AdapterError(ValueError):
    """Bad input to the adapter engine (unknown method, bad option, target not found, ...)."""


class TargetNotFoundError(AdapterError):
    """A target names no module of the model."""


class NotMergeableError(AdapterError):
    """merge()/unmerge() asked of a method whose modules cannot be folded into the base weights."""


class IncompatibleAdapterError(AdapterError):
    """A saved adapter does not fit the model it is loaded into (other architecture or shapes)."""
