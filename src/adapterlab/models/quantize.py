"""Quantized bases through bitsandbytes: 8-bit (LLM.int8, LLM-Adapters' --load_8bit) and 4-bit QLoRA (NF4).

The base is quantized as transformers loads it (`BitsAndBytesConfig`); adapters attach to its bitsandbytes
layers through the same hooks as to `nn.Linear` and stay in float32. Nothing here imports bitsandbytes
before a quantized load is asked for, so it is an optional dependency (`pip install 'adapterlab[quant]'`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

import torch
import transformers as T
from torch import nn

from ..errors import ModelError, UsageError
from ..core.layers import is_norm

QUANTIZATIONS = ("8bit", "4bit")
FLAGS = {"8bit": "--load-8bit", "4bit": "--load-4bit"}  # how the CLI spells each, for messages
MIN_BITSANDBYTES = (0, 45)
# The 4-bit QLoRA recipe (Dettmers et al., 2023): NF4 weights, double quantization, bf16 matmuls.
QLORA = dict(bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)


def describe(quantize: str) -> str:
    """How a message names a quantization mode: the CLI flag and the API argument."""
    return f"{FLAGS[quantize]} (quantize={quantize!r})"


def check_bitsandbytes(quantize: str) -> None:
    """Raise a one-line ModelError unless bitsandbytes is installed, recent enough and loads on this machine."""
    if quantize not in QUANTIZATIONS:
        raise UsageError(f"Unknown quantization {quantize!r}; use one of {', '.join(QUANTIZATIONS)} (or None).")
    needs = f"{describe(quantize)} quantizes the base model with bitsandbytes"
    try:
        version = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"{needs}, which is not installed: pip install bitsandbytes (or pip install "
                         f"'adapterlab[quant]'), or drop {FLAGS[quantize]}.") from None
    if tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) < MIN_BITSANDBYTES:
        raise ModelError(f"{needs} >= {'.'.join(map(str, MIN_BITSANDBYTES))}, but {version} is installed: "
                         "pip install -U bitsandbytes.")
    try:
        importlib.import_module("bitsandbytes")
    except Exception as exc:  # a wheel without a build for this machine fails in many ways (OSError, RuntimeError)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{needs}, which is installed but cannot run here ({reason}); it needs a CUDA device "
                         f"(or a CPU its wheel supports): pip install -U bitsandbytes on such a machine, or drop "
                         f"{FLAGS[quantize]}.") from None


def quantization_config(quantize: str, keep: tuple[str, ...] | None = None) -> T.BitsAndBytesConfig:
    """The BitsAndBytesConfig of `quantize` ("8bit" or "4bit", the QLoRA recipe); `keep`: module names left
    unquantized (None: transformers' default, the output head)."""
    check_bitsandbytes(quantize)
    skip: dict[str, Any] = {"llm_int8_skip_modules": list(keep)} if keep is not None else {}
    if quantize == "8bit":
        return T.BitsAndBytesConfig(load_in_8bit=True, **skip)
    return T.BitsAndBytesConfig(load_in_4bit=True, **QLORA, **skip)


def quantization_of(model: nn.Module) -> str | None:
    """The quantization a loaded model carries ("bitsandbytes 4bit nf4", ...), or None for a dense model."""
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    if config is None:
        return None
    data = config if isinstance(config, dict) else config.to_dict()
    method = data.get("quant_method", "unknown")
    method = str(getattr(method, "value", method))  # an enum (QuantizationMethod) or its saved string
    if data.get("load_in_4bit"):
        return f"{method} 4bit {data.get('bnb_4bit_quant_type', '')}".strip()
    if data.get("load_in_8bit"):
        return f"{method} 8bit"
    return method


def is_quantized(model: nn.Module) -> bool:
    """Whether the model's weights are stored quantized (loaded with a quantization config)."""
    return bool(getattr(model, "is_quantized", False))


def prepare_for_kbit_training(model: nn.Module) -> None:
    """What PEFT's prepare_model_for_kbit_training does that adapterlab needs: normalisation weights in float32.

    Their statistics are what low-precision training loses first; with `--dtype bfloat16` the norms would
    otherwise train the adapters through bf16 scales. (The other half of PEFT's recipe, input gradients for
    gradient checkpointing, is not needed: adapterlab checkpoints non-reentrantly, and transformers enables
    them for token inputs itself.) Quantized weights and the adapters (already float32) are left alone.
    """
    for module in model.modules():
        if is_norm(module):
            for parameter in module.parameters(recurse=False):
                if parameter.is_floating_point() and parameter.dtype != torch.float32:
                    parameter.data = parameter.data.float()


def keep_trainable_layout(model: nn.Module) -> None:
    """Turn off bitsandbytes' 4-bit CPU fast path (AVX512-BF16) on every layer of `model`.

    That path repacks a weight in place at the layer's first no-grad forward in eval mode; training steps through
    the layer fail afterwards (so a dev evaluation mid-run broke the run), and layers narrower than one 64-value
    block cannot be repacked at all (bitsandbytes 0.50). CPU inference is slower without it; CUDA is unaffected.
    """
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
