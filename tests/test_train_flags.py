"""Every `adapterlab train` flag x every task: honoured (it changes what the Trainer would get) or refused by name.

The walk goes through the real CLI (`adapterlab.cli.main`) and the real recipe up to the point where the
Trainer is built; the Trainer is replaced by a stub that records its arguments (TrainingArguments, model,
datasets, processor, callbacks) and stops. A flag is honoured when giving it changes that record; a flag that
is accepted and changes nothing fails the test. Fields a task does not read must be refused with a message
naming the flag (the task modules declare what they read: `TRAIN_FIELDS`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np
import pytest
import soundfile
from PIL import Image

from adapterlab.cli import build_parser
from adapterlab.commands.train import OPTION_PREFIX, adapter_option_names
from adapterlab.core.registry import METHODS, config_class
from adapterlab.tasks import TASKS, task_module
from adapterlab.train import TrainConfig
from adapterlab.train.config import option_flag
from train_helpers import causal_folder, encoder_folder, math_records, trainer_arguments, write_json

TASK_NAMES = list(TASKS)
TINY_AST = dict(model_type="audio-spectrogram-transformer", hidden_size=32, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=64, num_mel_bins=16, max_length=32)
TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, image_size=16, patch_size=8)
# Flags this walk does not vary, and why.
NOT_WALKED = {
    "help": "prints help",
    "task": "the axis of the walk",
    "overwrite": "only acts on a folder holding a run; tests/test_train.py replaces one with it",
    "resume_from_checkpoint": "needs a checkpoint or adapter folder; tests/test_llm_adapters_recipe.py starts from both",
    "lora_target_modules": "no effect, as in finetune.py, said in one line (tests/test_llm_adapters_recipe.py)",
    **{f"wandb_{k}": "no effect without wandb, said in one line (tests/test_llm_adapters_recipe.py)"
       for k in ("project", "run_name", "watch", "log_model")},
}
CHAT_TEMPLATE = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}A:{% endif %}"


# ---------------------------------------------------------------- data and models of each task

def write_tsv(path: Path, n: int, seed: int) -> Path:
    """Columns label, sentence, other, label2: every column a flag can name changes the examples."""
    rng = np.random.default_rng(seed)
    lines = ["label\tsentence\tother\tlabel2"]
    for i in range(n):
        label = i % 2
        lines.append(f"{label}\tthe film is {'good' if label else 'bad'} {rng.integers(9)}\tone two {i}\t{i % 3}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_choices(path: Path, n: int, seed: int) -> Path:
    """Columns question, other, choice1-3, label, label2 (0-based): every column a flag can name changes the
    questions, and every gold position has four questions."""
    rng = np.random.default_rng(seed)
    lines = ["question,other,choice1,choice2,choice3,label,label2"]
    for i in range(n):
        lines.append(f"which film is good {rng.integers(9)} the movie is great fun and good and bad,one two {i},"
                     f"good film,bad film,awful {i},{i % 3},{(i + 1) % 3}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_tones(root: Path, digits: int = 2, seed: int = 0) -> Path:
    """FSDD-like names {digit}_{speaker}_{take}.wav, 6 takes per digit and speaker."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for digit in range(digits):
        for speaker in ("ann", "bob"):
            for take in range(6):
                t = np.arange(2000) / 8000
                wave = 0.5 * np.sin(2 * np.pi * (300 + 400 * digit + rng.integers(50)) * t)
                soundfile.write(str(root / f"{digit}_{speaker}_{take}.wav"), wave.astype(np.float32), 8000)
    return root


def write_images(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def write_fgvc(root: Path) -> Path:
    """An FGVC root as VPT prepares it: images/<class>/ and train/val/test.json of {path: class id}."""
    write_images(root / "images", seed=3)
    for split, takes in (("train", range(4)), ("val", [4]), ("test", [5])):
        (root / f"{split}.json").write_text(json.dumps({f"{c}/{i}.png": k for k, c in ((1, "a"), (2, "b"))
                                                        for i in takes}))
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Per task: model, data, dev data and a second model / data set, plus the files some flags name."""
    root = tmp_path_factory.mktemp("walk")
    llama = causal_folder(root / "llama")
    tokenizer_config = llama / "tokenizer_config.json"  # give the tokenizer a chat template for --template chat
    tokenizer_config.write_text(json.dumps({**json.loads(tokenizer_config.read_text()), "chat_template": CHAT_TEMPLATE}))
    records = math_records(12)
    bert, bert2 = encoder_folder(root / "bert"), encoder_folder(root / "bert2", seed=1)
    (root / "ast2.json").write_text(json.dumps({**TINY_AST, "num_hidden_layers": 1}))
    (root / "ast.json").write_text(json.dumps(TINY_AST))
    (root / "vit.json").write_text(json.dumps(TINY_VIT))
    (root / "vit2.json").write_text(json.dumps({**TINY_VIT, "num_hidden_layers": 1}))
    tones = write_tones(root / "tones")
    (root / "labels.csv").write_text("file,label\n" + "".join(
        f"{p.name},{'ann' if 'ann' in p.name else 'bob'}\n" for p in sorted(tones.iterdir())))
    return {
        "causal-lm": dict(model=llama, model2=causal_folder(root / "llama2", seed=1),
                          data=write_json(root / "math.json", records),
                          data2=write_json(root / "math2.json", math_records(12, seed=1)),
                          dev=write_json(root / "dev.json", math_records(3, seed=2)),
                          contaminated=write_json(root / "test.json", records[:2])),
        "seq-cls": dict(model=bert, model2=bert2,
                        data=write_tsv(root / "train.tsv", 12, 0), data2=write_tsv(root / "train2.tsv", 12, 1),
                        dev=write_tsv(root / "dev.tsv", 4, 2)),
        "multiple-choice": dict(model=bert, model2=bert2, data=write_choices(root / "mc.csv", 12, 0),
                                data2=write_choices(root / "mc2.csv", 12, 1), dev=write_choices(root / "mc-dev.csv", 4, 2)),
        "audio-cls": dict(model=f"config:{root / 'ast.json'}", model2=f"config:{root / 'ast2.json'}",
                          data=tones, data2=write_tones(root / "tones2", seed=1),
                          dev=write_tones(root / "tones-dev", seed=2), labels_csv=root / "labels.csv",
                          fold=["--split", "fsdd-speakers", "--fold", "bob"],
                          cross_validate=["--split", "fsdd-speakers", "--cross-validate"]),
        "image-cls": dict(model=f"config:{root / 'vit.json'}", model2=f"config:{root / 'vit2.json'}",
                          data=write_images(root / "images"), data2=write_images(root / "images2", seed=1),
                          dev=write_images(root / "images-dev", seed=2),
                          split=["--split", "fgvc", "--data", str(write_fgvc(root / "fgvc"))]),
    }


# ---------------------------------------------------------------- what each flag is set to

def config_file(fx: dict[str, Any]) -> str:
    path = Path(fx["root"]) / "settings.yaml"
    path.write_text("lr: 0.05\n")
    return str(path)


# flag destination -> (argv giving it a value other than the baseline's, for the task's files)
ALTERNATIVES: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "config": lambda fx: ["--config", config_file(fx)],
    "model": lambda fx: ["--model", str(fx["model2"])],
    "data": lambda fx: ["--data", str(fx["data2"])],
    "output": lambda fx: ["--output", str(Path(fx["root"]) / "elsewhere")],
    "adapter": lambda fx: ["--adapter", "ia3"],
    "recipe": lambda fx: ["--recipe", "llm-adapters"],
    "group_by_length": lambda fx: ["--group-by-length"],
    "packing": lambda fx: ["--packing"],
    "eval_data": lambda fx: ["--eval-data", str(fx["dev"]), "--val-size", "0"],
    "val_size": lambda fx: ["--val-size", "4"],
    "max_train_samples": lambda fx: ["--max-train-samples", "8"],
    "template": lambda fx: ["--template", "chat"],
    "cutoff_len": lambda fx: ["--cutoff-len", "12"],
    "train_on_inputs": lambda fx: ["--train-on-inputs"],
    "add_eos": lambda fx: ["--add-eos", "false"],
    "text_column": lambda fx: ["--text-column", "other"],
    "text_pair_column": lambda fx: ["--text-pair-column", "other"],
    "label_column": lambda fx: ["--label-column", "label2"],
    "few_shot": lambda fx: ["--few-shot", "2"],
    "max_length": lambda fx: ["--max-length", "48"],
    "freq_mask": lambda fx: ["--freq-mask", "8"],
    "time_mask": lambda fx: ["--time-mask", "16"],
    "pooling": lambda fx: ["--pooling", "mean"],
    "labels_csv": lambda fx: ["--labels-csv", str(fx.get("labels_csv", "labels.csv"))],
    "label_pattern": lambda fx: ["--label-pattern", r"_(\w+?)_"],
    "split": lambda fx: fx.get("split", ["--split", "fsdd", "--val-size", "0"]),  # image-cls: an FGVC root
    "fold": lambda fx: fx.get("fold", ["--fold", "1"]),  # audio: a speaker held out of the FSDD-like tones
    "cross_validate": lambda fx: fx.get("cross_validate", ["--cross-validate"]),  # audio: the first fold's training
    "decontaminate": lambda fx: ["--decontaminate", str(fx.get("contaminated", "test.json"))],
    "epochs": lambda fx: ["--epochs", "2"],
    "max_steps": lambda fx: ["--max-steps", "5"],
    "lr": lambda fx: ["--lr", "0.01"],
    "batch_size": lambda fx: ["--batch-size", "8"],
    "micro_batch_size": lambda fx: ["--micro-batch-size", "4"],
    "warmup_steps": lambda fx: ["--warmup-steps", "3"],
    "scheduler": lambda fx: ["--scheduler", "cosine"],
    "weight_decay": lambda fx: ["--weight-decay", "0.1"],
    "max_grad_norm": lambda fx: ["--max-grad-norm", "0.5"],
    "eval_steps": lambda fx: ["--eval-steps", "3"],
    "save_steps": lambda fx: ["--save-steps", "3"],
    "save_total_limit": lambda fx: ["--save-total-limit", "5"],
    "logging_steps": lambda fx: ["--logging-steps", "3"],
    "early_stopping": lambda fx: ["--early-stopping", "2"],
    "gradient_checkpointing": lambda fx: ["--gradient-checkpointing"],
    "compile": lambda fx: ["--compile"],
    "compile_backend": lambda fx: ["--compile-backend", "aot_eager"],
    "precision": lambda fx: ["--precision", "bf16"],
    "dtype": lambda fx: ["--dtype", "bfloat16"],
    "load_8bit": lambda fx: ["--load-8bit"],
    "load_4bit": lambda fx: ["--load-4bit"],
    "seed": lambda fx: ["--seed", "7"],
    "num_workers": lambda fx: ["--num-workers", "1"],
    "resume": lambda fx: ["--resume"],
    # LLM-Adapters compatibility: --adapter_name picks the method; the variant flags refine "bottleneck".
    "adapter_name": lambda fx: ["--adapter_name", "bottleneck"],
    "use_parallel_adapter": lambda fx: ["--adapter_name", "bottleneck", "--use_parallel_adapter"],
    "use_adapterp": lambda fx: ["--adapter_name", "bottleneck", "--use_adapterp"],
    # options of the baseline method, lora (the others are refused with lora; see the next test)
    OPTION_PREFIX + "targets": lambda fx: ["--targets", "q"],
    OPTION_PREFIX + "exclude": lambda fx: ["--exclude", r".*\.0\..*"],
    OPTION_PREFIX + "layers": lambda fx: ["--layers", "0"],
    OPTION_PREFIX + "dropout": lambda fx: ["--dropout", "0.1"],
    OPTION_PREFIX + "r": lambda fx: ["--r", "2"],
    OPTION_PREFIX + "alpha": lambda fx: ["--alpha", "4"],
    OPTION_PREFIX + "use_dora": lambda fx: ["--use-dora"],
    OPTION_PREFIX + "init_lora_weights": lambda fx: ["--init-lora-weights", "gaussian"],
}
# Flags whose alternative is compared with the baseline plus these flags (the variant flags refine --adapter_name).
CONTEXT = {"use_parallel_adapter": ["--adapter_name", "bottleneck"], "use_adapterp": ["--adapter_name", "bottleneck"],
           "split": ["--val-size", "0"], "eval_data": ["--val-size", "0"], "fold": ["--val-size", "0"],
           "cross_validate": ["--val-size", "0"], "compile_backend": ["--compile"]}
# Flags refused for a reason other than the task, with a word of the expected message.
REFUSED_HERE = {"resume": "holds no run"}


# ---------------------------------------------------------------- running the recipe up to the Trainer

def observe(argv: list[str], out: Path, monkeypatch, capsys) -> dict[str, Any] | str:
    """What the Trainer would be given by `adapterlab train ARGV`, or the one-line error it printed instead."""
    try:
        seen = trainer_arguments(argv, monkeypatch, capsys)
    finally:
        for folder in (out, out.parent / "elsewhere"):
            shutil.rmtree(folder, ignore_errors=True)
    return seen if isinstance(seen, str) else describe(seen)


def describe(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A comparable record of the Trainer's arguments: what a flag can change."""
    model = kwargs["model"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    processor = kwargs["processing_class"]
    return {
        "args": {k: v for k, v in kwargs["args"].to_dict().items() if k != "logging_dir"},
        "parameters": {n: (tuple(p.shape), str(p.dtype), p.requires_grad) for n, p in model.named_parameters()},
        "trainable_sum": round(float(sum(p.detach().double().sum() for p in trainable)), 6),
        "adapters": {k: c.to_dict() for k, c in getattr(model, "adapterlab_configs", {}).items()},
        "model_config": model.config.to_dict(),
        # forward hooks change what the model computes without a parameter or config field (--pooling mean)
        "hooks": {n: sorted(getattr(h, "__qualname__", type(h).__name__) for h in m._forward_hooks.values())
                  for n, m in model.named_modules() if m._forward_hooks},
        "train": dataset_record(kwargs["train_dataset"]),
        "dev": dataset_record(kwargs["eval_dataset"]),
        "processor": processor.to_dict() if hasattr(processor, "to_dict") else repr(processor),
        "callbacks": [(type(c).__name__, {k: v for k, v in vars(c).items() if isinstance(v, (int, float, str))})
                      for c in kwargs["callbacks"]],
        "full_model": kwargs["full_model"],
        "collator": type(kwargs["data_collator"]).__name__,  # how a batch is made (padded, packed)
    }


def dataset_record(dataset: Any) -> Any:
    if dataset is None or isinstance(dataset, list):
        return json.dumps(dataset, sort_keys=True)
    first = {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in dataset[0].items()}
    return [str(p) for p in dataset.files], list(dataset.labels), first  # first: what is fed (masks, pixels)


def baseline(task: str, fx: dict[str, Any], out: Path) -> list[str]:
    return ["--task", task, "--model", str(fx["model"]), "--data", str(fx["data"]), "--output", str(out),
            "--val-size", "2", "--batch-size", "4", "--micro-batch-size", "2"]


def train_actions() -> list[Any]:
    parser = build_parser()
    return [a for a in parser._subparsers._group_actions[0].choices["train"]._actions if a.option_strings]


# ---------------------------------------------------------------- the walk

@pytest.mark.filterwarnings("ignore:.*no response tokens left")  # --cutoff-len 12 cuts every response
@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_flag_is_honoured_or_refused_by_name(task, files, tmp_path, monkeypatch, capsys, single_thread):
    """Each flag of `adapterlab train`, given to `--task TASK`, changes what the Trainer gets or is refused."""
    fx = {**files[task], "root": tmp_path}
    out = tmp_path / "run"
    module = task_module(task)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    lora_options = set(config_class("lora").option_names())
    cache: dict[tuple[str, ...], Any] = {}

    def run(argv: list[str]) -> Any:
        key = tuple(argv)
        if key not in cache:
            cache[key] = observe(argv, out, monkeypatch, capsys)
        return cache[key]

    base = baseline(task, fx, out)
    reference = run(base)
    assert isinstance(reference, dict), reference
    assert observe(base, out, monkeypatch, capsys) == reference, "the record must not change from run to run"
    problems = []
    for action in train_actions():
        dest = action.dest
        if dest in NOT_WALKED:
            continue
        if dest not in ALTERNATIVES:
            option = dest[len(OPTION_PREFIX):] if dest.startswith(OPTION_PREFIX) else None
            if option is not None and option not in lora_options:
                continue  # an option lora does not have: refusals are walked by the next test
            problems.append(f"{action.option_strings[0]}: no alternative value in ALTERNATIVES; add one")
            continue
        context = CONTEXT.get(dest, [])
        before, after = run(base + context), run(base + context + ALTERNATIVES[dest](fx))
        assert isinstance(before, dict), before
        field = fields.get(dest)
        unread = field is not None and field.metadata.get("per_task") and dest not in module.TRAIN_FIELDS
        names = [s for s in action.option_strings if s in str(after)]
        if unread or dest in REFUSED_HERE:
            expected = REFUSED_HERE.get(dest, "does not apply to --task")
            if not (isinstance(after, str) and names and expected in after):
                problems.append(f"{action.option_strings[0]}: expected a refusal naming it ({expected!r}), got "
                                f"{after if isinstance(after, str) else 'a run'}")
        elif isinstance(after, str):
            problems.append(f"{action.option_strings[0]}: refused, but {task} should honour it: {after}")
        elif after == before:
            problems.append(f"{action.option_strings[0]}: accepted and has no effect on {task}")
    assert not problems, "\n".join(problems)


def test_every_per_task_field_is_read_by_some_task():
    """A per-task field that no task reads could never be set; a task may only list TrainConfig fields."""
    per_task = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("per_task")}
    read = set().union(*(task_module(t).TRAIN_FIELDS for t in TASKS))
    assert read == per_task
    for task in TASKS:
        assert set(getattr(task_module(task), "NOT_APPLICABLE", {})) <= per_task - task_module(task).TRAIN_FIELDS


@pytest.mark.parametrize("method", sorted(METHODS))
def test_options_of_other_methods_are_refused_naming_the_methods_that_have_them(method):
    """`--r 8 --adapter series` is refused naming --r and lora; an option the method has is kept."""
    for option, owners in adapter_option_names().items():
        config = TrainConfig(model="m", data=["d.json"], output="o", adapter=method, adapter_options={option: 1})
        if option in config_class(method).accepted_options({option: 1}):  # its own, or (mosa) its base's
            config.check_adapter_options()  # accepted; its effect is the method's (tests/test_matrix.py)
            continue
        with pytest.raises(ValueError) as caught:
            config.validate()
        message = str(caught.value)
        flags = [option_flag(option, owner) for owner in owners]  # --mosa-split: --split is a training flag
        assert any(flag in message for flag in flags) and f"--adapter {method}" in message, message
        assert all(owner in message for owner in owners), message
