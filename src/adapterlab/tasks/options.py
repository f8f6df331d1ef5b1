"""The options of each task (`adapterlab train` flags that only some tasks read), as typed dataclasses.

Every option is defined once, with its help, flag aliases and default, in one small dataclass per concept; each
task's options class is made of those it reads. `TrainConfig` takes its per-task fields from here (so a default
is spelled in one place), the CLI makes one flag group per task from these classes, and a task reads its options
as `XOptions.of(values)`: typed attributes, defaults filled in, never `dict.get(name, default)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T", bound="Options")


def option(help: str, *aliases: str, **kwargs: Any) -> Any:
    """A dataclass field of a task option: its CLI help and alias flag names in the metadata (`per_task`)."""
    return field(metadata={"help": help, "aliases": aliases, "per_task": True}, **kwargs)


@dataclass
class Options:
    """Base of the task option classes: `of` builds one from the run's settings."""

    @classmethod
    def of(cls: type[T], values: Any) -> T:
        """The options of this class from `values` (an instance, or a mapping such as TrainConfig's per-task
        settings or a test's partial dict); names it does not read are ignored, missing ones take the default."""
        if isinstance(values, cls):
            return values
        values = dict(values or {})
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})

    @classmethod
    def names(cls) -> frozenset[str]:
        """The TrainConfig fields this task reads."""
        return frozenset(f.name for f in dataclasses.fields(cls))


@dataclass
class Subset(Options):
    """A seeded random subset of the training records."""

    max_train_samples: int | None = option("use a seeded random subset of this many records of --data (the dev "
                                           "records of --val-size / --split are then held out of it)",
                                           default=None)


@dataclass
class FewShot(Options):
    """K training examples per class."""

    few_shot: int | None = option("keep K training examples per class, chosen by --seed (after the dev split); "
                                  "causal-lm refuses it: free-text outputs have no classes (use "
                                  "--max-train-samples)", default=None)


@dataclass
class Cutoff(Options):
    """The token budget of one example."""

    cutoff_len: int = option("maximum tokens per example", "--cutoff_len", default=256)


@dataclass
class Columns(Options):
    """Which table columns hold the text and the label."""

    text_column: str | None = option("column holding the text (guessed if unset)", default=None)
    label_column: str = option("column holding the label", default="label")


@dataclass
class BaseDtype(Options):
    """The dtype the base model is loaded in."""

    dtype: str | None = option("dtype the base model is loaded in (e.g. bfloat16); adapters train in float32",
                               default=None)


@dataclass
class Quantized(Options):
    """Loading the base quantized (bitsandbytes)."""

    load_8bit: bool = option("load the base quantized to 8 bits (bitsandbytes LLM.int8); adapters train in float32 "
                             "on top (needs bitsandbytes)", "--load-in-8bit", "--load_in_8bit",
                             default=False)
    load_4bit: bool = option("QLoRA: load the base quantized to 4 bits (bitsandbytes NF4, double quantization, bf16 "
                             "compute); adapters train in float32 on top (needs bitsandbytes)", "--load-in-4bit",
                             "--load_in_4bit", default=False)


@dataclass
class Protocol(Options):
    """Which records are dev (and test): random, or a dataset's own protocol."""

    split: str = option("dev set: random (--val-size of every class), fsdd (file takes 0-4), or a dataset's own "
                        "protocol, --data being its root: esc50 (fold K tests, fold K-1 is dev, three train), "
                        "urbansound8k (fold K is dev, nine train), fsdd-speakers (speaker K is dev), speech-commands "
                        "and fluent-speech (official train/validation/test lists; validation is dev); image-cls: fgvc "
                        "(VPT's train/val/test.json), vtab-1k (train800val200 trains, val200 is dev, as MoSA's final "
                        "runs) or vtab-1k-tune (train800 / val200). A test set is scored after training with the "
                        "best dev weights", default="random")


@dataclass
class CausalLMOptions(Subset, Cutoff, BaseDtype, Quantized):
    """causal-lm: instruction tuning on prompt/response records."""

    recipe: str = option("whose defaults the settings not given take: adapterlab, or llm-adapters (their finetune.py "
                         "and PEFT fork's; chosen by itself when a command spells a flag as finetune.py does, e.g. "
                         "--base_model or --adapter_name)", default="adapterlab")
    template: str = option("prompt: alpaca (LLM-Adapters' evaluation prompt), llm-adapters (the exact text their "
                           "finetune.py trains on) or chat (the tokenizer's chat template)",
                           default="alpaca")
    train_on_inputs: bool = option("also put the loss on the prompt tokens", "--train_on_inputs",
                                   default=False)
    add_eos: bool = option("append EOS to each example when it fits", default=True)
    decontaminate: list[str] = option("eval files whose questions are dropped from the training data",
                                      default_factory=list)
    group_by_length: bool = option("draw training batches of records of similar length (the Trainer's length-grouped "
                                   "sampler over each --batch-size group), so a micro-batch pads to a length its "
                                   "records nearly share: the fastest batches on CPU (an epoch 1.29x faster than "
                                   "padded random batches, packed 1.05x: BENCHMARKS.md, 'Training batches'), but it "
                                   "changes which records train together, and the demo's 80 steps solved 45 of 100 problems "
                                   "with it instead of 71, so it is off by default, as in LLM-Adapters' finetune.py "
                                   "and the HF Trainer; the dev set keeps its order",
                                   default=False)
    packing: bool = option("padding-free batches: each micro-batch's records end to end in one row with per-record "
                           "position ids, the loss of every record as when padded; refused unless the model and "
                           "adapter keep packed records apart (checked before training: BLOOM, OPT, prefix and "
                           "prompt tuning cannot). Slower than --group-by-length on CPU: a packed row's attention "
                           "covers all its records (BENCHMARKS.md, 'Training batches')",
                           default=False)


@dataclass
class ClassificationOptions(Columns, Cutoff, Subset, FewShot, BaseDtype, Quantized):
    """seq-cls: text classification."""

    text_pair_column: str | None = option("second text column (sentence pairs)", default=None)


@dataclass
class MultipleChoiceOptions(Columns, Cutoff, Subset, FewShot, BaseDtype):
    """multiple-choice: one score per choice (PIQA, ARC, ...)."""


@dataclass
class AudioOptions(Protocol, Subset, FewShot):
    """audio-cls: audio classification (AST, wav2vec 2.0, HuBERT)."""

    labels_csv: str | None = option("CSV with file,label columns (file relative to the data folder)",
                                    default=None)
    label_pattern: str | None = option("regex on file names whose first group is the label (default: the prefix "
                                       "before the first _)", default=None)
    fold: str | None = option("the fold of --split esc50 / urbansound8k (1-5 / 1-10) or fsdd-speakers (a speaker name)",
                              default=None)
    cross_validate: bool = option("train once per fold of --split into OUTPUT/fold-K (ordinary run folders) and write "
                                  "OUTPUT/cross_validation.json and .md: each fold's best dev (and test) metric, their "
                                  "mean and standard deviation", default=False)
    freq_mask: int = option("SpecAugment: each time a training spectrogram is served, zero one band of 0 to F-1 mel "
                            "bins (normalised features, as PETL-for-AST: F=24 on ESC-50 and UrbanSound8K); 0 = off",
                            default=0)
    time_mask: int = option("SpecAugment: likewise one band of 0 to T-1 frames (PETL-for-AST: T=80); 0 = off",
                            default=0)
    max_length: int | None = option("audio input length, padded or cut: AST spectrogram frames (a checkpoint's "
                                    "position embeddings are interpolated to it); wav2vec2/HuBERT waveform samples at "
                                    "16 kHz (default 16000, 1 s)", default=None)
    pooling: str | None = option("what the audio head reads of the encoder's output: cls (AST: the mean of its CLS and "
                                 "distillation tokens) or mean (all tokens or frames, as Cappellazzo et al.'s PETL-AST "
                                 "code); default: the transformers class's own (AST cls, wav2vec2/HuBERT mean)",
                                 default=None)


@dataclass
class ImageOptions(Protocol, Subset, FewShot):
    """image-cls: image classification (ViT)."""


TASK_OPTIONS: tuple[type[Options], ...] = (CausalLMOptions, ClassificationOptions, MultipleChoiceOptions, AudioOptions,
                                          ImageOptions)


def task_setting(name: str) -> Any:
    """A TrainConfig field for task option `name`, with the help, aliases and default of its one definition here."""
    for options in TASK_OPTIONS:
        for f in dataclasses.fields(options):
            if f.name == name:
                return field(metadata=dict(f.metadata), default=f.default, default_factory=f.default_factory)
    raise KeyError(f"no task reads an option named {name!r}")
