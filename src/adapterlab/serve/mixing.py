"""Whether this engine runs a different adapter per row (`model(..., adapter_names=[...])`, #22's mixed batches).

TEMPORARY: until that engine change is merged, the worker falls back to one batch per adapter, the batches taking
turns under adapterlab.set_active. Once merged, this returns True and the fallback can go.
"""

from __future__ import annotations

import importlib.util
from typing import Any


def takes_adapter_names(model: Any) -> bool:
    """Whether `model`'s adapters can be chosen per row with adapter_names= (the engine's row routing exists)."""
    return importlib.util.find_spec("adapterlab.core.row_routing") is not None
