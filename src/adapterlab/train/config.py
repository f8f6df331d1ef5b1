"""`TrainConfig`: every setting of a training run, one field per `adapterlab train` flag.

Field metadata holds the flag help and the LLM-Adapters finetune.py aliases, so the CLI is generated from
this dataclass and a YAML file can set any field by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import AdapterError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TEMPLATES = ("alpaca", "chat")
# Fields that steer how a run proceeds but not what it computes: they may differ when a run is resumed.
RUN_CONTROL = ("resume", "overwrite", "output")


def flag(help: str, *aliases: str, **kwargs: Any) -> Any:
    """A dataclass field with CLI help and alias flag names in its metadata."""
    return field(metadata={"help": help, "aliases": aliases}, **kwargs)


@dataclass
class TrainConfig:
    """A training run. `adapter_options` holds the method's own options (r, alpha, targets, size, ...)."""

    model: str = flag("hub id, local folder, .gguf file or short name (smollm2-135m, minilm-l6)", "--base_model",
                      default="")
    data: list[str] = flag("training data file(s)", "--data_path", default_factory=list)
    output: str = flag("run folder", "--output_dir", default="")
    task: str = flag("causal-lm (instruction tuning) or seq-cls (text classification), or another registered task",
                     default="causal-lm")
    adapter: str = flag("adapter method (any registered one) or 'full' for full fine-tuning", default="lora")
    adapter_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "method options", "aliases": ()})
    eval_data: list[str] = flag("dev data file(s); else --val-size records are held out", default_factory=list)
    val_size: int | float = flag("dev records held out of the training data (a count, or a fraction < 1)",
                           "--val_set_size", default=0)
    max_train_samples: int | None = flag("use a seeded random subset of this many training records", default=None)
    template: str = flag("prompt: alpaca (LLM-Adapters) or chat (the tokenizer's chat template)", default="alpaca")
    cutoff_len: int = flag("maximum tokens per example", "--cutoff_len", default=256)
    train_on_inputs: bool = flag("also put the loss on the prompt tokens", "--train_on_inputs", default=False)
    add_eos: bool = flag("append EOS to each example when it fits", default=True)
    text_column: str | None = flag("classification: column holding the text (guessed if unset)", default=None)
    text_pair_column: str | None = flag("classification: second text column (sentence pairs)", default=None)
    label_column: str = flag("classification: column holding the label", default="label")
    few_shot: int | None = flag("audio-cls, image-cls: keep K training examples per class, chosen by --seed",
                                default=None)
    max_length: int | None = flag("audio-cls: spectrogram frames, padded or cut (a checkpoint's position "
                                  "embeddings are interpolated to it)", default=None)
    labels_csv: str | None = flag("audio-cls: CSV with file,label columns (file relative to the data folder)",
                                  default=None)
    label_pattern: str | None = flag("audio-cls: regex on file names whose first group is the label "
                                     "(default: the prefix before the first _)", default=None)
    split: str = flag("audio-cls dev set: random (--val-size of every class) or fsdd (file takes 0-4)",
                      default="random")
    decontaminate: list[str] = flag("eval files whose questions are dropped from the training data",
                                    default_factory=list)
    epochs: float = flag("training epochs", "--num_epochs", default=3.0)
    max_steps: int = flag("stop after this many optimizer steps (overrides --epochs when > 0)", default=-1)
    lr: float = flag("peak learning rate", "--learning_rate", default=3e-4)
    batch_size: int = flag("global batch size (micro-batch x accumulation x processes)", "--batch_size", default=16)
    micro_batch_size: int = flag("examples per forward pass and process", "--micro_batch_size", default=4)
    warmup_steps: int = flag("linear warmup steps", default=100)
    scheduler: str = flag("learning-rate schedule (linear, cosine, constant_with_warmup, ...)", default="linear")
    weight_decay: float = flag("AdamW weight decay", default=0.0)
    max_grad_norm: float = flag("gradient clipping norm", default=1.0)
    eval_steps: int | None = flag("evaluate every N steps (default: every epoch)", "--eval_step", default=None)
    save_steps: int | None = flag("checkpoint every N steps (default: at each evaluation, else each epoch)",
                                  "--save_step", default=None)
    save_total_limit: int = flag("checkpoints kept (oldest deleted; best/ is kept apart)", default=2)
    logging_steps: int = flag("log the training loss every N steps", default=10)
    early_stopping: int | None = flag("stop after N evaluations without a better dev metric", default=None)
    gradient_checkpointing: bool = flag("recompute activations in the backward pass to save memory",
                                        "--use_gradient_checkpointing", default=False)
    precision: str = flag("auto (bf16 on GPUs that have it, else fp16 on GPU, fp32 on CPU), fp32, bf16, fp16",
                          default="auto")
    dtype: str | None = flag("dtype the base model is loaded in (e.g. bfloat16); adapters train in float32",
                             default=None)
    seed: int = flag("seed for data order, splits and adapter init", default=42)
    num_workers: int = flag("data loader worker processes", default=0)
    resume: bool = flag("continue from the last complete checkpoint in the run folder", default=False)
    overwrite: bool = flag("replace a run of another config already in the output folder", default=False)

    def validate(self) -> None:
        """Raise a clear error for settings that cannot work, before anything is loaded or written."""
        if not self.model:
            raise AdapterError("No model given: pass --model (a hub id, folder, .gguf file or short name).")
        if not self.data:
            raise AdapterError("No training data given: pass --data FILE.")
        if not self.output:
            raise AdapterError("No run folder given: pass --output DIR.")
        if self.template not in TEMPLATES:
            raise AdapterError(f"--template must be one of {TEMPLATES}, got {self.template!r}.")
        if self.precision not in PRECISIONS:
            raise AdapterError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}.")
        for name in ("batch_size", "micro_batch_size", "cutoff_len", "logging_steps"):
            if int(getattr(self, name)) <= 0:
                raise AdapterError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}.")
        if self.batch_size % self.micro_batch_size:
            raise AdapterError(f"--batch-size {self.batch_size} is not a multiple of --micro-batch-size "
                               f"{self.micro_batch_size}.")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise AdapterError("Set --epochs or --max-steps to a positive number.")
        if self.resume and self.overwrite:
            raise AdapterError("--resume continues the run in the folder and --overwrite replaces it; pick one.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def run_settings(self) -> dict[str, Any]:
        """The settings that decide what a run computes (a resumed run must match them)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_CONTROL}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """A config from a dict (e.g. a YAML file), rejecting unknown keys with the valid ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AdapterError(f"Unknown training setting(s) {unknown}; valid ones: {sorted(known)}.")
        return cls(**data)
