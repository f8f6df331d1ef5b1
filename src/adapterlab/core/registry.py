"""Method name -> config class. A new method is one file in `methods/` plus one line here."""

from __future__ import annotations

import importlib
from typing import Any

from .config import AdapterConfig, UnknownOptionError
from ..errors import AdapterError

# name: ("module:ConfigClass", preset options applied before the user's options)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "lora": ("adapterlab.methods.lora:LoraConfig", {}),
    "prompt": ("adapterlab.methods.prompt:PromptConfig", {}),
    "prefix": ("adapterlab.methods.prefix:PrefixConfig", {}),
    "ptuning": ("adapterlab.methods.ptuning:PTuningConfig", {}),
    "series": ("adapterlab.methods.bottleneck:SeriesConfig", {}),
    "houlsby": ("adapterlab.methods.bottleneck:HoulsbyConfig", {}),
    "pfeiffer": ("adapterlab.methods.bottleneck:PfeifferConfig", {}),
    "parallel": ("adapterlab.methods.bottleneck:ParallelConfig", {}),
    "scaled_parallel": ("adapterlab.methods.bottleneck:ScaledParallelConfig", {}),
    "adaptformer": ("adapterlab.methods.bottleneck:AdaptFormerConfig", {}),
    "conformer": ("adapterlab.methods.conformer:ConformerConfig", {}),
    "compacter": ("adapterlab.methods.compacter:CompacterConfig", {}),
    "compacterpp": ("adapterlab.methods.compacter:CompacterPlusPlusConfig", {}),
    "ia3": ("adapterlab.methods.ia3:IA3Config", {}),
    "bitfit": ("adapterlab.methods.bitfit:BitFitConfig", {}),
    "mosa": ("adapterlab.methods.mosa:MosaConfig", {}),
    "linear_probe": ("adapterlab.methods.linear_probe:LinearProbeConfig", {}),
    "fusion": ("adapterlab.methods.fusion:FusionConfig", {}),
}


def method_names() -> list[str]:
    return sorted(METHODS)


def config_class(method: str) -> type[AdapterConfig]:
    """The config dataclass registered under `method`."""
    if method not in METHODS:
        raise AdapterError(f"Unknown adapter method {method!r}. Known methods: {', '.join(method_names())}.")
    module_name, class_name = METHODS[method][0].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def make_config(method: str | AdapterConfig, **options: Any) -> AdapterConfig:
    """A config object from a method name and options (presets filled in), or the config given."""
    if isinstance(method, AdapterConfig):
        if options:
            raise AdapterError(
                f"Options {sorted(options)} were given beside a {type(method).__name__} object; "
                "set them on the config instead."
            )
        return method
    if not isinstance(method, str):
        raise AdapterError(f"method must be a registered name or an AdapterConfig, got {type(method).__name__}.")
    cls = config_class(method)
    return _from_options(cls, {**METHODS[method][1], **options})


def _from_options(cls: type[AdapterConfig], options: dict[str, Any], source: str | None = None) -> AdapterConfig:
    """cls.from_options, an unknown option's message saying which other methods take it."""
    try:
        return cls.from_options(options, source)
    except UnknownOptionError as exc:
        raise UnknownOptionError(f"{exc}{_taken_elsewhere(cls.method, exc.unknown)}", exc.unknown) from None


def _taken_elsewhere(method: str, unknown: list[str]) -> str:
    """' `x` is an option of m1, m2; <method> does not take it.' for each unknown option another method has."""
    notes = []
    for option in unknown:
        owners = [m for m in method_names() if m != method and option in config_class(m).option_names()]
        if owners:
            notes.append(f" `{option}` is an option of {', '.join(owners)}; {method} does not take it.")
    return "".join(notes)


def config_from_dict(data: dict[str, Any], source: str | None = None) -> AdapterConfig:
    """Rebuild a config saved by `AdapterConfig.to_dict` (the `method` key picks the class); `source` names
    the file it came from, for error messages.

    Keys other than the method's options and the checkpoint's own metadata are refused rather than
    dropped: an option this version does not know would otherwise be silently lost. An option missing
    from an older save takes the value that save implies (`legacy_defaults`), not today's default.
    """
    where = f"{source}: " if source else "adapter config: "
    data = {k: v for k, v in data.items() if k not in SAVED_METADATA}
    method = data.pop("method", None)
    if method is None:
        raise AdapterError(f"{where}no 'method' field; it was not written by adapterlab.")
    if not isinstance(method, str):
        raise AdapterError(
            f"{where}`method` is {method!r}, but it must be a method name (str), one of {', '.join(method_names())}."
        )
    cls = config_class(method)
    return _from_options(cls, {**cls.legacy_defaults, **data}, source)


# Keys that checkpoint.save_adapter writes beside the options.
SAVED_METADATA = ("base_model", "adapterlab_format")
