"""Finding blocks and projections in a model family that has no row in `architectures`."""

from __future__ import annotations

import re

from torch import nn

from .architectures import Architecture
from .layers import is_linear

# Name patterns per logical projection, tried in order; the first match within a block wins. Each is
# anchored at a dotted-name boundary (see `_matches`), so "v" matches "attn.v" but not "attn.conv".
PATTERNS: dict[str, tuple[str, ...]] = {
    "qkv": (r"(query_key_value|qkv_proj|c_attn|Wqkv|qkv|W_pack)$",),
    "q": (r"(q_proj|query|q|wq|q_lin)$",),
    "k": (r"(k_proj|key|k|wk|k_lin)$",),
    "v": (r"(v_proj|value|v|wv|v_lin)$",),
    "o": (r"(o_proj|out_proj|attention\.output\.dense|attn\.c_proj|self_attention\.dense|attention\.dense|wo|out_lin|dense)$",),
    "gate": (r"(gate_proj|w1|w3_gate)$",),
    "up": (r"(up_proj|fc1|fc_in|dense_h_to_4h|c_fc|intermediate\.dense|lin1|w3)$",),
    "down": (r"(down_proj|fc2|fc_out|dense_4h_to_h|mlp\.c_proj|^output\.dense|lin2|w2)$",),
}


def _matches(pattern: str, name: str) -> bool:
    return re.search(rf"(^|\.){pattern}", name) is not None


def find_block_list(model: nn.Module) -> str | None:
    """Name of the longest ModuleList whose children share one class and hold linear layers."""
    best, best_len = None, 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 1 or "adapterlab" in name.split("."):
            continue
        classes = {type(child) for child in module}
        has_linear = any(is_linear(m) for m in module[0].modules())
        if len(classes) == 1 and has_linear and len(module) > best_len:
            best, best_len = name, len(module)
    return best


def discover(model: nn.Module, model_type: str) -> Architecture | None:
    """Guess an Architecture from module names; None when no block list is found."""
    blocks = find_block_list(model)
    if blocks is None:
        return None
    block = model.get_submodule(blocks)[0]
    linear_names = [n for n, m in block.named_modules() if n and is_linear(m)]
    found: dict[str, str] = {}
    for logical, patterns in PATTERNS.items():
        for pattern in patterns:
            hit = next((n for n in linear_names if _matches(pattern, n) and n not in found.values()), None)
            if hit:
                found[logical] = hit
                break
    if "qkv" in found and any(k in found for k in ("q", "k", "v")):
        found.pop("qkv")
    layout = "unknown" if "qkv" in found else None
    return Architecture(name=f"discovered:{model_type}", blocks=blocks, qkv_layout=layout, **found)
