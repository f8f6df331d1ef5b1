"""adapterlab: attach, train, evaluate and measure parameter-efficient adapters on transformers models."""

from .compose import add_weighted_adapter
from .core.architectures import ARCHITECTURES, Architecture
from .core.checkpoint import load_adapter, save_adapter
from .core.config import AdapterConfig
from .core.engine import (
    active_adapters,
    adapter_names,
    attach,
    count_parameters,
    detach,
    disabled,
    get_config,
    merge,
    set_active,
    unmerge,
)
from .errors import AdapterError, IncompatibleAdapterError, NotMergeableError, TargetNotFoundError
from .core.merging import merge_and_unload, save_merged
from .core.registry import config_class, make_config, method_names
from .core.row_routing import routed
from .interop.peft import export_peft, load_peft
from .methods.adapterdrop import set_drop_layers

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES", "AdapterConfig", "AdapterError", "Architecture", "IncompatibleAdapterError",
    "add_weighted_adapter",
    "NotMergeableError", "TargetNotFoundError", "active_adapters", "adapter_names", "attach", "config_class",
    "count_parameters", "detach", "disabled", "export_peft", "get_config", "load_adapter", "load_peft",
    "make_config", "merge", "merge_and_unload", "method_names", "routed", "save_adapter", "save_merged", "set_active",
    "set_drop_layers", "unmerge",
]
