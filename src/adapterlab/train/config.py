"""`TrainConfig`: every setting of a training run, one field per `adapterlab train` flag.

Field metadata holds the flag help and the LLM-Adapters finetune.py aliases, so the CLI is generated from
this dataclass and a YAML file can set any field by name. Values are coerced to the annotated types (so
`lr: 3e-4`, which YAML reads as a string, works) or refused naming the setting. Fields marked `per_task`
are read by some tasks only: they are defined (help, aliases, default) once in the tasks' option classes
(`adapterlab.tasks.options`), and a value other than the default for a task that does not read it is refused
rather than ignored.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from ..data.templates import TEMPLATES
from ..errors import AdapterError, MissingPathError, UsageError
from ..models.quantize import check_bitsandbytes
from ..core.coerce import Mismatch, coerce, describe
from ..core.compiling import BACKEND, chosen_backend
from ..tasks import task_module, tasks_reading
from ..tasks.base import TaskOptions, quantization
from ..tasks.options import task_setting
from .trainable import Trainable, trainable_for

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RECIPES = ("adapterlab", "llm-adapters")
# Fields that steer how a run proceeds but not what it computes: they may differ when a run is resumed (a compiled
# step computes what the eager step does).
RUN_CONTROL = ("resume", "overwrite", "output", "compile", "compile_backend")


def flag(help: str, *aliases: str, per_task: bool = False, **kwargs: Any) -> Any:
    """A dataclass field with CLI help and alias flag names in its metadata; `per_task`: only some tasks read it."""
    return field(metadata={"help": help, "aliases": aliases, "per_task": per_task}, **kwargs)


def flag_name(name: str) -> str:
    """The command-line flag of a setting or adapter option: `micro_batch_size` -> `--micro-batch-size`."""
    return "--" + name.replace("_", "-")


def option_flag(name: str, method: str) -> str:
    """The flag of adapter option `name` of `method`: --name, or --method-name where a training setting has that
    name (MoSA's `split` is --mosa-split, since --split is audio's dev split; see commands/train.py)."""
    settings = {f.name for f in dataclasses.fields(TrainConfig)}
    return f"--{method}-{name.replace('_', '-')}" if name in settings else flag_name(name)


@dataclass
class TrainConfig:
    """A training run. `adapter_options` holds the method's own options (r, alpha, targets, size, ...)."""

    model: str = flag("hub id, local folder, .gguf file or short name (smollm2-135m, minilm-l6)", "--base_model",
                      default="")
    data: list[str] = flag("training data file(s)", "--data_path", default_factory=list)
    output: str = flag("run folder", "--output_dir", default="")
    recipe: str = task_setting("recipe")
    task: str = flag("causal-lm (instruction tuning), seq-cls (text classification), "
                     "multiple-choice (PIQA, ARC, ...: one score per choice), audio-cls or image-cls",
                     default="causal-lm")
    adapter: str = flag("adapter method (any registered one) or 'full' for full fine-tuning", default="lora")
    adapter_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "method options", "aliases": ()})
    eval_data: list[str] = flag("dev data file(s); else --val-size records are held out", default_factory=list)
    val_size: int | float = flag("dev records held out of the training data (a count, or a fraction < 1)",
                                 "--val_set_size", default=0)
    max_train_samples: int | None = task_setting("max_train_samples")
    template: str = task_setting("template")
    cutoff_len: int = task_setting("cutoff_len")
    train_on_inputs: bool = task_setting("train_on_inputs")
    add_eos: bool = task_setting("add_eos")
    text_column: str | None = task_setting("text_column")
    text_pair_column: str | None = task_setting("text_pair_column")
    label_column: str = task_setting("label_column")
    few_shot: int | None = task_setting("few_shot")
    max_length: int | None = task_setting("max_length")
    pooling: str | None = task_setting("pooling")
    labels_csv: str | None = task_setting("labels_csv")
    label_pattern: str | None = task_setting("label_pattern")
    split: str = task_setting("split")
    fold: str | None = task_setting("fold")
    cross_validate: bool = task_setting("cross_validate")
    freq_mask: int = task_setting("freq_mask")
    time_mask: int = task_setting("time_mask")
    decontaminate: list[str] = task_setting("decontaminate")
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
    compile: bool = flag("torch.compile the model's forward and backward (the HF Trainer's torch_compile): compiles at "
                         "the first steps, then each step may run faster (benchmarks/compile_effect.py measures it "
                         "per method); refused for methods that draw at random each step (MoSA, robust AdapterDrop)",
                         default=False)
    compile_backend: str = flag("torch.compile backend of --compile: inductor (generated kernels; on CPU it needs a C++ "
                                "compiler) or aot_eager (the same graphs run eagerly: checks tracing, no speed-up)",
                                default=BACKEND)
    gradient_checkpointing: bool = flag("recompute activations in the backward pass to save memory",
                                        "--use_gradient_checkpointing", default=False)
    precision: str = flag("auto (bf16 on GPUs that have it, else fp16 on GPU, fp32 on CPU), fp32, bf16, fp16",
                          default="auto")
    dtype: str | None = task_setting("dtype")
    load_8bit: bool = task_setting("load_8bit")
    load_4bit: bool = task_setting("load_4bit")
    seed: int = flag("seed for data order, splits and adapter init", default=42)
    num_workers: int = flag("data loader worker processes", default=0)
    resume: bool = flag("continue from the last complete checkpoint in the run folder", default=False)
    resume_from_checkpoint: str | None = flag(
        "start from this folder, as LLM-Adapters' flag: a run's checkpoint folder (weights, optimizer, schedule and "
        "step) or a saved adapter folder (its weights only; training starts afresh)", default=None)
    group_by_length: bool = task_setting("group_by_length")
    packing: bool = task_setting("packing")
    overwrite: bool = flag("replace a run of another config already in the output folder", default=False)

    def __post_init__(self) -> None:
        """Coerce every field to its annotated type (YAML reads `3e-4` as a string) or refuse it by name."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce_setting(f.name, getattr(self, f.name)))

    def validate(self) -> None:
        """Raise a clear error for settings that cannot work, before anything is loaded or written."""
        if not self.model:
            raise AdapterError("No model given: pass --model (a hub id, folder, .gguf file or short name).")
        if not self.data:
            raise AdapterError("No training data given: pass --data FILE.")
        if not self.output:
            raise AdapterError("No run folder given: pass --output DIR.")
        self.check_task_fields()
        self.check_adapter_options()
        self.trainable.check_values(self.adapter_options)  # before the model is loaded
        if self.template not in TEMPLATES:
            raise AdapterError(f"--template must be one of {TEMPLATES}, got {self.template!r}.")
        if self.recipe not in RECIPES:
            raise AdapterError(f"--recipe must be one of {RECIPES}, got {self.recipe!r}.")
        self.check_start_folder()
        if self.precision not in PRECISIONS:
            raise AdapterError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}.")
        for name in ("batch_size", "micro_batch_size", "cutoff_len", "logging_steps", "few_shot",
                     "max_train_samples", "max_length"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise AdapterError(f"{flag_name(name)} must be positive, got {getattr(self, name)}.")
        if self.batch_size % self.micro_batch_size:
            raise AdapterError(f"--batch-size {self.batch_size} is not a multiple of --micro-batch-size "
                               f"{self.micro_batch_size}.")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise AdapterError("Set --epochs or --max-steps to a positive number.")
        if self.resume and self.overwrite:
            raise AdapterError("--resume continues the run in the folder and --overwrite replaces it; pick one.")
        self.check_dev_set()
        self.check_quantization()
        self.check_compile()
        if self.fold is not None and self.cross_validate:
            raise UsageError(f"--fold {self.fold} picks one fold and --cross-validate runs every fold; pass one.")

    @property
    def trainable(self) -> Trainable:
        """What the run trains: the adapter method, or every weight (`--adapter full`)."""
        return trainable_for(self.adapter)

    @property
    def quantize(self) -> str | None:
        """The quantization the base is loaded with: "8bit", "4bit" or None."""
        return quantization(vars(self))

    def check_quantization(self) -> None:
        """Refuse two quantizations, full fine-tuning of a quantized base, and a missing bitsandbytes."""
        if self.load_8bit and self.load_4bit:
            raise UsageError("--load-8bit and --load-4bit pick different quantizations of the base; pass one.")
        if self.quantize is None:
            return
        self.trainable.check_quantized("--load-8bit" if self.load_8bit else "--load-4bit")
        check_bitsandbytes(self.quantize)

    def check_compile(self) -> None:
        """--compile-backend only with --compile, and a backend torch knows (the method is checked once attached)."""
        chosen_backend(self.compile, None if self.compile_backend == BACKEND else self.compile_backend, flag_name)

    def check_start_folder(self) -> None:
        """--resume_from_checkpoint must name a folder, and cannot be combined with --resume."""
        if self.resume_from_checkpoint is None:
            return
        if self.resume:
            raise UsageError("--resume continues the run in --output and --resume_from_checkpoint starts from "
                             f"{self.resume_from_checkpoint}; pass one.")
        if not Path(self.resume_from_checkpoint).is_dir():
            raise MissingPathError(f"--resume_from_checkpoint {self.resume_from_checkpoint}: no such folder; give a "
                                   "run's checkpoint folder or a saved adapter folder.")

    def check_dev_set(self) -> None:
        """Refuse two sources of dev data, and dev-set settings without a dev set."""
        if self.eval_data and self.val_size:
            raise UsageError("--eval-data gives the dev set and --val-size holds one out of --data; pass one.")
        has_dev = bool(self.eval_data or self.val_size or self.split != "random")  # other splits fix a dev set
        for name in ("eval_steps", "early_stopping"):
            if getattr(self, name) is not None and not has_dev:
                raise UsageError(f"{flag_name(name)} needs a dev set; pass --eval-data FILE or --val-size N.")

    def check_task_fields(self) -> None:
        """Refuse a per-task setting, changed from its default, that the chosen task does not read."""
        module = task_module(self.task)  # an unknown task is refused with the known ones
        for f in dataclasses.fields(self):
            if f.metadata.get("per_task") and f.name not in module.TRAIN_FIELDS and \
                    getattr(self, f.name) != default_of(f):
                reason = getattr(module, "NOT_APPLICABLE", {}).get(f.name)
                readers = ", ".join(tasks_reading(f.name)) or "no task"
                raise UsageError(f"{flag_name(f.name)} does not apply to --task {self.task} (read by {readers} only)"
                                 f"{': ' + reason if reason else ''}; drop it.")

    def check_adapter_options(self) -> None:
        """Refuse adapter options that the chosen method does not have, naming the methods that do."""
        self.trainable.check_options(self.adapter_options, option_flag)

    def task_options(self) -> TaskOptions:
        """What the run's task receives: the model, data, dev-set settings and the per-task settings."""
        keys = [f.name for f in dataclasses.fields(self) if f.metadata.get("per_task")]
        return TaskOptions(model=self.model, data=list(self.data), eval_data=list(self.eval_data) or None,
                           val_size=self.val_size, seed=self.seed, options={k: getattr(self, k) for k in keys})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def run_settings(self) -> dict[str, Any]:
        """The settings that decide what a run computes (a resumed run must match them)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_CONTROL}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> TrainConfig:
        """A config from a dict (e.g. a YAML file), rejecting unknown keys with the valid ones; values are
        coerced to the field types (`"3e-4"` -> 0.0003) or refused naming `source` (e.g. the file)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        where = f"{source}: " if source else ""
        if unknown:
            raise AdapterError(f"{where}unknown training setting(s) {unknown}; valid ones: {sorted(known)}.")
        try:
            return cls(**data)
        except UsageError as exc:
            raise UsageError(f"{where}{exc}") from exc


def default_of(f: dataclasses.Field) -> Any:
    """The default value of a dataclass field (calling its factory)."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@functools.cache
def field_types() -> dict[str, Any]:
    """TrainConfig field name -> its annotated type (evaluated from the string annotations)."""
    return typing.get_type_hints(TrainConfig)


def coerce_setting(name: str, value: Any) -> Any:
    """`value` converted to the annotated type of field `name` where that is unambiguous ("3e-4" -> 0.0003 for
    a float, "3" -> 3 for an int, one string -> [string] for a list); else UsageError naming the setting."""
    hint = field_types()[name]
    try:
        return coerce(value, hint)
    except Mismatch:
        raise UsageError(f"setting {name!r} ({flag_name(name)}) = {value!r}: expected {describe(hint)}, "
                         f"got {type(value).__name__}.") from None
