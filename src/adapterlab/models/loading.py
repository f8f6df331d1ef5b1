"""Load a model and its tokenizer or processor from a hub id, a local folder, a .gguf file or a short name.

GGUF files are dequantised into an ordinary dense model (transformers' `GgufConfig(dequantize=True)`), so
adapters attach to plain `nn.Linear` layers and the HF Trainer sees an unquantised model it can train.
`quantize` ("8bit", "4bit") quantizes a safetensors model with bitsandbytes as it loads (see `quantize`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import transformers as T
from huggingface_hub.errors import HFValidationError
from torch import nn

from ..errors import UsageError
from .choices import add_choice_scoring, note_replaced_head
from .devices import check_device
from .known import KNOWN_MODELS, UnknownModelError
from .sources import ModelSource, check_folder, damaged_file, resolve_model
from .quantize import describe, keep_trainable_layout, quantization_config

TASKS: dict[str, tuple[str, str]] = {  # task -> (model auto class, processor auto class)
    "causal-lm": ("AutoModelForCausalLM", "AutoTokenizer"),
    "seq-cls": ("AutoModelForSequenceClassification", "AutoTokenizer"),
    "audio-cls": ("AutoModelForAudioClassification", "AutoFeatureExtractor"),
    "image-cls": ("AutoModelForImageClassification", "AutoImageProcessor"),
    # families without a multiple-choice head get a one-output sequence classifier instead (see models/choices.py)
    "multiple-choice": ("AutoModelForMultipleChoice", "AutoTokenizer"),
}
CLASSIFICATION_TASKS = ("seq-cls", "audio-cls", "image-cls")
# Files that, next to a .gguf, would be read instead of the GGUF's own metadata.
_HF_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
             "preprocessor_config.json")


# Modules a quantized classifier keeps dense: its head is freshly drawn and trains in full beside the adapter.
CLASSIFIER_HEADS = ("classifier", "score", "classification_head")


def parse_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype | None:
    """A dtype name (float32, bfloat16, ...) as a torch.dtype; None and "auto" pass through; others are refused."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise UsageError(f"Unknown dtype {dtype!r}; use e.g. float32, bfloat16, float16 or auto.")
    return value


@contextlib.contextmanager
def _pretrained_args(source: ModelSource) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path or id, extra kwargs) for `from_pretrained`; a GGUF is read from a folder where it is alone."""
    if source.kind != "gguf":
        yield source.location, {}
        return
    gguf = Path(source.location)
    if not any((gguf.parent / f).exists() for f in _HF_FILES):
        yield str(gguf.parent), {"gguf_file": gguf.name}
        return
    with tempfile.TemporaryDirectory(prefix="adapterlab-gguf-") as tmp:
        (Path(tmp) / gguf.name).symlink_to(gguf)
        yield tmp, {"gguf_file": gguf.name}


def _from_pretrained(auto_class: str, source: ModelSource, spec: str, **kwargs: Any) -> Any:
    """`T.<auto_class>.from_pretrained` on `source`, turning an unreachable or unknown hub id into one clear error."""
    with _pretrained_args(source) as (location, extra):
        if extra and auto_class.startswith("AutoModel"):
            extra["quantization_config"] = T.GgufConfig(dequantize=True)
        try:
            return getattr(T, auto_class).from_pretrained(location, **extra, **kwargs)
        except Exception as exc:
            damage = damaged_file(source, exc) if source.is_local else None
            if damage is not None:
                raise damage from exc
            if source.is_local or not isinstance(exc, (OSError, HFValidationError)):
                raise
            raise UnknownModelError(
                f"Unknown model {spec!r}: not a local folder or .gguf file, not a known short name "
                f"({', '.join(KNOWN_MODELS)}), and the hub could not provide it ({exc})."
            ) from exc


def load_tokenizer(spec: str, *, padding_side: str | None = None, log: Callable[[str], None] = print, **kwargs: Any) -> Any:
    """The tokenizer of `spec`, with a pad token (eos when it has none); `padding_side` if given."""
    return _tokenizer(resolve_model(spec, log=log), spec, padding_side, **kwargs)


def _tokenizer(source: ModelSource, spec: str, padding_side: str | None, **kwargs: Any) -> Any:
    check_folder(source, needs_tokenizer=True)
    tokenizer = _from_pretrained("AutoTokenizer", source, spec, **kwargs)
    tokenizer.name_or_path = source.name
    if tokenizer.pad_token is None and (tokenizer.eos_token or tokenizer.unk_token) is not None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token  # the one pad fallback: batches need one
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return tokenizer


def _label_kwargs(task: str, num_labels: int | None, label_names: list[str] | None) -> dict[str, Any]:
    if num_labels is None and label_names is None:
        return {}
    if task not in CLASSIFICATION_TASKS:
        raise UsageError(f"num_labels/label_names are for classification tasks ({', '.join(CLASSIFICATION_TASKS)}), "
                         f"not {task!r}.")
    if label_names is not None:
        if num_labels is not None and num_labels != len(label_names):
            raise UsageError(f"num_labels={num_labels} but {len(label_names)} label_names were given; pass one of them.")
        num_labels = len(label_names)
    names = list(label_names) if label_names is not None else [f"LABEL_{i}" for i in range(num_labels)]
    # A checkpoint's own head may have another number of classes: start a fresh head in that case.
    return {"num_labels": num_labels, "id2label": dict(enumerate(names)),
            "label2id": {n: i for i, n in enumerate(names)}, "ignore_mismatched_sizes": True}


def _quantized_kwargs(quantize: str, task: str, device: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """from_pretrained kwargs that quantize the model with bitsandbytes: its config, and a device map (a
    quantized model cannot be moved with `.to`); a second quantization config is refused."""
    if "quantization_config" in kwargs:
        raise UsageError(f"{describe(quantize)} and quantization_config=... both set the quantization; pass one.")
    keep = CLASSIFIER_HEADS if task in CLASSIFICATION_TASKS else None
    return {"quantization_config": quantization_config(quantize, keep),
            "device_map": kwargs.get("device_map", {"": device or default_device()})}


def _requantized_gguf(model_class: str, source: ModelSource, spec: str, options: dict[str, Any],
                      log: Callable[[str], None]) -> nn.Module:
    """A GGUF model quantized with bitsandbytes: transformers applies one quantization per load, so the GGUF is
    dequantised, saved as safetensors in a temporary folder and loaded from there quantized (the GGUF's own
    rounding and bitsandbytes' then add up)."""
    log(f"Dequantising {source.location} into a temporary folder to quantize it with bitsandbytes.")
    dense_options = {k: v for k, v in options.items() if k not in ("quantization_config", "device_map")}
    dense = _from_pretrained(model_class, source, spec, **dense_options)
    with tempfile.TemporaryDirectory(prefix="adapterlab-requantize-") as tmp:
        dense.save_pretrained(tmp)
        del dense
        return getattr(T, model_class).from_pretrained(tmp, **options)


def default_device() -> str:
    """Where a quantized model is put when no device is given: this process's GPU (LOCAL_RANK under torchrun, as
    LLM-Adapters' device_map), else the CPU."""
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', torch.cuda.current_device()))}"


def _has_choice_head(source: ModelSource, spec: str) -> bool:
    """Whether transformers has a multiple-choice model for the family of `spec` (BERT does, LLaMA does not)."""
    config = _from_pretrained("AutoConfig", source, spec)
    return type(config) in T.MODEL_FOR_MULTIPLE_CHOICE_MAPPING


def load_model(spec: str, task: str = "causal-lm", *, num_labels: int | None = None,
               label_names: list[str] | None = None, dtype: str | torch.dtype | None = None,
               device: str | None = None, padding_side: str | None = None, quantize: str | None = None,
               log: Callable[[str], None] = print, **kwargs: Any) -> tuple[nn.Module, Any]:
    """(model, tokenizer-or-processor) from a hub id, a local folder, a .gguf file, or a known short name.

    `task` picks the head: causal-lm, seq-cls, audio-cls, image-cls or multiple-choice (a model that takes
    (batch, choices, tokens) and returns one score per choice, see `models.choices`). Classification heads get `num_labels`
    or `label_names` (a new head when they differ from the checkpoint's). `dtype` None keeps transformers'
    default; a GGUF is dequantised to a dense model. `quantize` "8bit" (LLM.int8) or "4bit" (QLoRA: NF4, double
    quantization, bf16 compute) loads the linear layers quantized with bitsandbytes (`dtype` then applies to
    the rest; a classification head stays dense), on `device` (default: the GPU if there is one). Extra kwargs
    go to the model's `from_pretrained`.
    """
    if task not in TASKS:
        raise UsageError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    check_device(device, "device")  # before any download
    model_class, processor_class = TASKS[task]
    source = resolve_model(spec, log=log)
    options = {**_label_kwargs(task, num_labels, label_names), **kwargs}
    if quantize is not None:  # before any download: a missing bitsandbytes costs nothing
        options.update(_quantized_kwargs(quantize, task, device, kwargs))
    if source.kind == "hub":
        log(f"Loading {spec!r} from the Hugging Face Hub.")
    if dtype is not None:
        options["dtype"] = parse_dtype(dtype)
    if processor_class == "AutoTokenizer":
        processor = _tokenizer(source, spec, padding_side)  # first: a bad hub id fails before the big download
    else:
        check_folder(source, needs_tokenizer=False)
        processor = _from_pretrained(processor_class, source, spec)
    one_per_pair = task == "multiple-choice" and not _has_choice_head(source, spec)
    if one_per_pair:  # a decoder: one score per (question, choice) row from a one-output classifier
        model_class = "AutoModelForSequenceClassification"
        options.update(num_labels=1, ignore_mismatched_sizes=True)
    if task == "multiple-choice":  # a checkpoint's own head of another shape (a 2-way classifier) is replaced
        options["ignore_mismatched_sizes"] = True
    if quantize is not None and source.kind == "gguf":
        model = _requantized_gguf(model_class, source, spec, options, log)
    elif task == "multiple-choice":
        model, info = _from_pretrained(model_class, source, spec, output_loading_info=True, **options)
        note_replaced_head(info, log)
    else:
        model = _from_pretrained(model_class, source, spec, **options)
    model.config._name_or_path = source.name
    if quantize is not None:
        keep_trainable_layout(model)
    if task == "multiple-choice":
        add_choice_scoring(model, flatten=one_per_pair)
    if task in ("seq-cls", "multiple-choice") and model.config.pad_token_id is None:
        model.config.pad_token_id = processor.pad_token_id  # decoders classify at the last non-pad token
    if device is not None and quantize is None:
        model.to(device)
    return model.eval(), processor
