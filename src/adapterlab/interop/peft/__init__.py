"""PEFT interop in one place: its folder format both ways (`transfer`), its weight files (`files`), the protocol a
method implements to take part (`protocol`) and the shared format of the virtual-token methods (`prompts`)."""

from .protocol import PeftMethod, exports_to_peft
from .transfer import export_peft, load_any_adapter, load_peft

__all__ = ["PeftMethod", "export_peft", "exports_to_peft", "load_any_adapter", "load_peft"]
