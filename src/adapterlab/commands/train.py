"""`adapterlab train`: flags generated from TrainConfig and from every registered method's config fields.

Settings come from (lowest first) the dataclass defaults, a `--config` YAML file, and the command line.
The flag names of LLM-Adapters' finetune.py are accepted as aliases so its published commands run; a command
that spells a flag as only finetune.py does runs their recipe (their defaults; see interop/llm_adapters/finetune.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Collection
from typing import Any

import yaml

from ..data.reading import read_text
from ..errors import AdapterError, UsageError
from ..core.registry import METHODS, config_class
from ..core.target_forms import is_regex
from .method_flags import add_method_groups
from ..tasks import TASKS, task_module, tasks_reading
from ..train import TrainConfig, cross_validate, train
from ..train.config import flag_name
from ..interop.llm_adapters.finetune import WANDB_FLAGS, flag_notes, is_theirs, their_recipe

OPTION_PREFIX = "adapter_option:"
# LLM-Adapters finetune.py option names -> our adapter option names
OPTION_ALIASES = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "bottleneck_size": "size",
                  "target_modules": "targets", "non_linearity": "activation", "adapter_dropout": "dropout"}
SPELLINGS = "flag_spellings"  # namespace entry: the flags as the command spelled them
# LLM-Adapters --adapter_name values -> our methods (bottleneck is refined by --use_parallel_adapter/--use_adapterp)
ADAPTER_NAMES = {"lora": "lora", "bottleneck": "series", "prefix-tuning": "prefix"}


class Spelled(argparse._StoreAction):
    """`store`, also recording how the flag was spelled (a command of LLM-Adapters' is told by its spellings)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        super().__call__(parser, namespace, values, option_string)
        setattr(namespace, SPELLINGS, [*getattr(namespace, SPELLINGS, []), option_string])


def parse_bool(text: str | bool) -> bool:
    """true/false, yes/no, 1/0 (as fire, which LLM-Adapters uses, accepts True/False)."""
    if isinstance(text, bool):
        return text
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_number(text: str) -> int | float:
    """An int when the text is one, else a float (--val-size 120 or 0.1)."""
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def parse_value(text: str) -> Any:
    """An adapter option value: YAML scalars and lists, so 32, 0.05, true and '["q_proj", "v_proj"]' all work."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if value is None else value


def parse_items(text: str) -> Any:
    """A YAML value, or comma-separated items each read as YAML ('0,1' -> [0, 1]; '32' -> 32)."""
    value = parse_value(text)
    if isinstance(value, str) and "," in value:
        return [parse_value(item.strip()) for item in value.split(",") if item.strip()]
    return value


def parse_list_value(text: str) -> Any:
    """A list option: a YAML/JSON list, or comma-separated items each read as YAML ('0,1' -> [0, 1], '0' -> [0]);
    a single word stays a string (the method's config splits it), and so does a regex, commas and all
    (--targets '.*\\.layers\\.(0|1)\\..*_proj')."""
    if is_regex(text) and not isinstance(parse_value(text), (list, dict)):
        return text
    value = parse_items(text)
    return value if isinstance(value, (str, list)) else [value]


def names(name: str, aliases: tuple[str, ...] = ()) -> list[str]:
    """--dashed-name, --underscored_name and the aliases, without duplicates."""
    flags = [f"--{name.replace('_', '-')}", f"--{name}", *aliases]
    return list(dict.fromkeys(flags))


def task_groups(parser: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """One argument group per task (from its options class); a flag several tasks read sits in the first one's
    group, and the others' descriptions name it."""
    owner = {f.name: tasks_reading(f.name)[0] for f in dataclasses.fields(TrainConfig) if f.metadata.get("per_task")}
    groups = {}
    for task in TASKS:
        options = task_module(task).OPTIONS
        shared = [flag_name(n) for n in sorted(options.names()) if owner[n] != task]
        note = f" Also reads {', '.join(shared)} (listed above)." if shared else ""
        groups[task] = parser.add_argument_group(f"--task {task} options", f"{options.__doc__}{note}")
    return {name: groups[task] for name, task in owner.items()}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, the per-task ones in their task's group; only flags the user gives land in
    the namespace."""
    group = parser.add_argument_group("training")
    per_task = task_groups(parser)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "adapter_options":
            continue
        kind = str(f.type)
        help_text = f.metadata.get("help")
        if f.metadata.get("per_task"):  # the tasks come from the task modules, so the help cannot go stale
            help_text = f"{', '.join(tasks_reading(f.name))}: {help_text}"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text, "action": Spelled}
        if kind == "bool":
            kwargs.update(nargs="?", const=True, type=parse_bool, metavar="BOOL")
        elif kind.startswith("list"):
            kwargs.update(nargs="+", metavar="FILE")
        elif f.name == "val_size":
            kwargs.update(type=parse_number)
        elif kind.startswith("int"):
            kwargs.update(type=int)
        elif kind.startswith("float"):
            kwargs.update(type=float)
        per_task.get(f.name, group).add_argument(*names(f.name, f.metadata.get("aliases", ())), **kwargs)


def adapter_option_names() -> dict[str, list[str]]:
    """Each option of any registered method -> the methods that have it."""
    options: dict[str, list[str]] = {}
    for method in sorted(METHODS):
        for f in dataclasses.fields(config_class(method)):
            options.setdefault(f.name, []).append(method)
    return options


def list_options() -> set[str]:
    """Options that some method declares as a list (their flags split comma-separated values)."""
    return {f.name for method in METHODS for f in dataclasses.fields(config_class(method))
            if str(f.type).replace("typing.", "").lower().startswith("list")}


def add_adapter_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per option of every registered method (e.g. --r, --alpha, --targets, --size), one group per method."""
    lists = list_options()
    add_method_groups(parser, OPTION_ALIASES, lambda name: dict(
        dest=OPTION_PREFIX + name, default=argparse.SUPPRESS, nargs="?", const=True, action=Spelled,
        type=parse_list_value if name in lists else parse_value))
    fusion = next(g for g in parser._action_groups if g.title == "--adapter fusion")
    fusion.add_argument("--fuse", dest=OPTION_PREFIX + "adapters", metavar="NAME=PATH,...", default=argparse.SUPPRESS,
                        action=Spelled, type=parse_list_value,
                        help="--adapter fusion: the trained adapters to fuse, each loaded frozen from its folder "
                             "under NAME (the same as --adapters).")
    legacy = parser.add_argument_group("LLM-Adapters finetune.py compatibility")
    legacy.add_argument("--adapter_name", dest="adapter_name", default=argparse.SUPPRESS, action=Spelled,
                        help="lora | bottleneck | prefix-tuning (or any method name)")
    legacy.add_argument("--use_parallel_adapter", dest="use_parallel_adapter", nargs="?", const=True, action=Spelled,
                        type=parse_bool, default=argparse.SUPPRESS,
                        help="with --adapter_name bottleneck: the parallel adapter")
    legacy.add_argument("--use_adapterp", dest="use_adapterp", nargs="?", const=True, type=parse_bool, action=Spelled,
                        default=argparse.SUPPRESS, help="with --adapter_name bottleneck: the Pfeiffer adapter")
    legacy.add_argument("--lora_target_modules", dest="lora_target_modules", type=parse_list_value, action=Spelled,
                        default=argparse.SUPPRESS, help="accepted; no effect, as in finetune.py (use --target_modules)")
    for name in WANDB_FLAGS:
        legacy.add_argument(f"--{name}", dest=name, default=argparse.SUPPRESS, action=Spelled,
                            help="accepted; no effect without the wandb package (refused with it)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `adapterlab train`."""
    parser = subparsers.add_parser(
        "train", help="fine-tune a model with an adapter (or in full)",
        usage="%(prog)s --model MODEL --data FILE [FILE ...] --output DIR [--task TASK] [--adapter METHOD] "
              "[FLAG VALUE ...]",
        description="Fine-tune a model with an adapter (or --adapter full). Every flag can also come from a "
                    "YAML file given with --config; flags on the command line win.",
    )
    parser.add_argument("--config", help="YAML file of settings (field names as in the flags, dashes or underscores)")
    add_config_flags(parser)
    add_adapter_flags(parser)
    parser.set_defaults(func=run)


def read_yaml(path: str) -> dict[str, Any]:
    """The settings in a YAML config file, keys normalised to underscores."""
    text = read_text(path, "--config file")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise AdapterError(f"--config {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise AdapterError(f"--config {path} must hold a mapping of settings, not a {type(data).__name__}.")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge defaults, the --config file and the given flags into a TrainConfig."""
    return config_and_notes(args)[0]


def config_and_notes(args: argparse.Namespace) -> tuple[TrainConfig, list[str]]:
    """The TrainConfig (defaults, the --config file, the given flags; LLM-Adapters' defaults for their commands)
    and the lines to print about it."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    option_names = adapter_option_names()
    settings: dict[str, Any] = {}
    options: dict[str, Any] = {}
    if getattr(args, "config", None):
        for key, value in read_yaml(args.config).items():
            key = OPTION_ALIASES.get(key, key)
            if key == "adapter_options":
                if not isinstance(value or {}, dict):
                    raise UsageError(f"--config {args.config}: adapter_options = {value!r}: expected a mapping "
                                     "of option: value (e.g. r: 16).")
                options.update(value or {})
            elif key in fields:
                settings[key] = value
            elif key in option_names:
                options[key] = value
            else:
                raise AdapterError(f"--config {args.config}: unknown setting {key!r}.")
    given = vars(args)
    settings.update({k: v for k, v in given.items() if k in fields})
    options.update({k[len(OPTION_PREFIX):]: v for k, v in given.items() if k.startswith(OPTION_PREFIX)})
    if "--fuse" in given.get(SPELLINGS, []) and settings.get("adapter") != "fusion":
        raise UsageError(f"--fuse names the adapters that --adapter fusion fuses, not --adapter "
                         f"{settings.get('adapter', 'lora')}; pass --adapter fusion or drop --fuse.")
    variants = {k for k in ("use_parallel_adapter", "use_adapterp") if given.get(k)}
    if "adapter_name" in given and "adapter" in given:
        raise UsageError(f"--adapter {given['adapter']} and --adapter_name {given['adapter_name']} both pick the "
                         "method; pass one.")
    if "adapter_name" in given or variants:
        settings["adapter"] = legacy_method(given.get("adapter_name"), given.get("use_parallel_adapter", False),
                                            given.get("use_adapterp", False), variants)
    notes = flag_notes({k: v for k, v in given.items() if k in (*WANDB_FLAGS, "lora_target_modules")})
    causal = settings.get("task", "causal-lm") == "causal-lm"  # finetune.py is causal-LM only; others refuse --recipe
    if is_theirs(given.get(SPELLINGS, []) if causal else [], settings.get("recipe")):
        settings, options, recipe_notes = their_recipe(settings, options, settings.get("adapter", "lora"))
        notes = recipe_notes + notes
    source = f"--config {args.config}" if getattr(args, "config", None) else None
    return TrainConfig.from_dict({**settings, "adapter_options": options}, source=source), notes


def legacy_method(name: str | None, parallel: bool, pfeiffer: bool, given: Collection[str] = ()) -> str:
    """The method for LLM-Adapters' --adapter_name (bottleneck = series, parallel or pfeiffer); the variant
    flags (`given`) are refused unless they pick one bottleneck variant."""
    if given and name != "bottleneck":
        raise UsageError(f"--{' and --'.join(sorted(given))} only apply with --adapter_name bottleneck; "
                         "drop them or pass --adapter parallel / pfeiffer directly.")
    if parallel and pfeiffer:
        raise UsageError("--use_parallel_adapter and --use_adapterp pick different bottleneck adapters; pass one.")
    if name == "bottleneck":
        return "parallel" if parallel else "pfeiffer" if pfeiffer else "series"
    return ADAPTER_NAMES.get(name, name)


def run(args: argparse.Namespace) -> int:
    """Parse the settings, train (once, or once per fold with --cross-validate), print the summary."""
    config, notes = config_and_notes(args)
    for note in notes:
        print(note)
    if config.cross_validate:
        report = cross_validate(config)
        print(json.dumps({k: report[k] for k in ("split", "best_dev", "test")}, indent=2))
        print(f"fold runs and cross_validation.md in: {config.output}")
        return 0
    summary = train(config)
    shown = ("wall_time_s", "steps", "train_loss", "tokens_per_s", "best_metric", "trainable_parameters",
             "final_weights", *(("test_metric",) if summary.get("test_metric") else ()))
    print(json.dumps({k: summary[k] for k in shown}, indent=2))
    print(f"run folder: {config.output}")
    return 0
