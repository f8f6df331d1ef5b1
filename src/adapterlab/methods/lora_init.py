"""The initial values of a LoRA's A and B, PEFT's `init_lora_weights`: True (A Kaiming-uniform, B zero), False (both
left as nn.Linear draws them: the update is not zero, for tests), "gaussian" (A ~ N(0, 1/r), B zero), and the two
that start from the host's weight and change it: PiSSA (Meng et al., 2024; B A = the top-r singular part of W) and
OLoRA (Buyukakyuz, 2024; B A = the first r columns / rows of W's QR), each leaving W - s B A as the layer's weight so
that the adapted layer starts as the base. Same draws and arithmetic as PEFT's, so one torch seed gives one adapter.

The residual inits are deterministic in W: loading a saved PiSSA or OLoRA adapter into the original base model
(adapterlab's load_adapter, or PEFT's from_pretrained after export_peft) computes the same residual weight before the
trained A and B are copied in. `detach` restores W (to float rounding); merge_and_unload keeps the residual model.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..core.layers import is_quantized_layer, weight_as_out_in
from ..errors import AdapterError



class LowRankPair(Protocol):
    """What the initialisations and DoRA read of a LoRA module (methods/lora.py's LoraAdapter): its two linear layers
    and its scale; typed structurally so that these variant files need not import the module that uses them."""

    lora_A: nn.Linear
    lora_B: nn.Linear
    scaling: float
    dropout: nn.Module
    drops: bool
    training: bool

    def delta_weight(self) -> torch.Tensor: ...

INITS = (True, False, "gaussian", "pissa", "olora")
RESIDUAL_INITS = ("pissa", "olora")  # those that change the host's weight
# PEFT's other values, refused by name (what they need that adapterlab lacks)
NOT_IMPLEMENTED = {
    "pissa_niter_": "its randomized SVD draws another residual weight at every load, so a saved adapter would not "
                    "reproduce; use 'pissa' (the exact SVD)",
    "loftq": "LoftQ needs the quantization loop over the base weight",
    "eva": "EVA needs activations from a data pass",
    "corda": "CorDA needs covariance from a data pass",
    "lora_ga": "LoRA-GA needs gradients from a data pass",
    "orthogonal": "not implemented",
    "mica": "MiCA is a variant that freezes B; not implemented",
}


def check_init(value: Any) -> bool | str:
    """`init_lora_weights` as one of INITS ("true"/"false" as booleans, names lower-cased), or an AdapterError
    naming the value and what to use."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, str):
        value = value.strip().lower()
    if value in INITS:
        return value
    for name, why in NOT_IMPLEMENTED.items():
        if isinstance(value, str) and value.startswith(name):
            raise AdapterError(f"lora: init_lora_weights={value!r} is not supported in adapterlab ({why}). Use "
                               "true, false, gaussian, pissa or olora.")
    raise AdapterError(f"lora: `init_lora_weights` must be true, false, gaussian, pissa or olora, got {value!r}.")


def draw(adapter: LowRankPair, init: bool | str) -> None:
    """Set A and B for the inits that need no host weight (A and B were just built as nn.Linear, as PEFT's are)."""
    if init is True:
        nn.init.kaiming_uniform_(adapter.lora_A.weight, a=math.sqrt(5))
    elif init == "gaussian":
        nn.init.normal_(adapter.lora_A.weight, std=1 / adapter.lora_A.out_features)
    if init is not False:
        nn.init.zeros_(adapter.lora_B.weight)


def check_host(host: nn.Module, init: bool | str, r: int, in_features: int, out_features: int) -> None:
    """Refuse a residual init where it cannot run as PEFT's does: a quantized weight, OLoRA on a Conv1D (PEFT's QR
    ignores its transposed layout), a rank above the weight's."""
    if init not in RESIDUAL_INITS:
        return
    if is_quantized_layer(host):
        raise AdapterError(f"lora: init_lora_weights={init!r} changes the base weight, and this "
                           f"{type(host).__name__} stores it quantized; load the base unquantized for the init "
                           "(PEFT's advice too: initialise, then quantize the residual model).")
    if init == "olora" and isinstance(host, Conv1D):
        raise AdapterError("lora: init_lora_weights='olora' on GPT-2's transposed Conv1D layers is not supported "
                           "(PEFT's OLoRA ignores fan_in_fan_out there); use 'pissa' or target nn.Linear layers.")
    if r > min(in_features, out_features):
        rank = min(in_features, out_features)
        raise AdapterError(f"lora: init_lora_weights={init!r} takes the top r of the weight's {rank} singular "
                           f"directions; r={r} is more. Lower r.")


@torch.no_grad()
def residual_init(adapter: LowRankPair, host: nn.Module, init: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Set A and B from the host's weight W (PiSSA or OLoRA) and leave W - s B A in the host, as PEFT computes it
    (in float32, cast back to W's dtype). Returns (B, A) as set, for `restore`."""
    weight = weight_as_out_in(host)
    full = weight.to(torch.float32)
    r, scaling = adapter.lora_A.out_features, adapter.scaling
    if init == "pissa":
        u, s, vh = torch.linalg.svd(full, full_matrices=False)
        s = s[:r] / scaling
        down = torch.diag(torch.sqrt(s)) @ vh[:r]
        up = u[:, :r] @ torch.diag(torch.sqrt(s))
    else:  # olora
        q, rr = torch.linalg.qr(full)
        down, up = rr[:r].contiguous(), q[:, :r].contiguous()
    adapter.lora_A.weight.copy_(down.to(adapter.lora_A.weight.dtype))
    adapter.lora_B.weight.copy_(up.to(adapter.lora_B.weight.dtype))
    weight.copy_((full - scaling * up @ down).to(weight.dtype))
    return up.clone(), down.clone()


@torch.no_grad()
def restore(host: nn.Module, residual: tuple[torch.Tensor, torch.Tensor], scaling: float) -> None:
    """Add back to the host's weight what `residual_init` took out (equal to the original to float rounding)."""
    weight = weight_as_out_in(host)
    up, down = (t.to(weight.device) for t in residual)
    weight.copy_((weight.to(torch.float32) + scaling * up @ down).to(weight.dtype))


__all__ = ["INITS", "RESIDUAL_INITS", "check_host", "check_init", "draw", "residual_init", "restore"]
