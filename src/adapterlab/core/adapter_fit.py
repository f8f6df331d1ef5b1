"""Whether a saved adapter fits a model: the same entries, each of the shape the model needs.

`load_adapter` checks this from the safetensors header and the shapes its config would build on the meta device,
before any adapter module is allocated: a config whose `r`, `size` or token count disagrees with its weights (say
r = 10**9) is one line, not an allocation that fills memory. `load_state` checks the tensors again as it copies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import IncompatibleAdapterError


def check_fit(expected: Mapping[str, Sequence[int]], saved: Mapping[str, Sequence[int]], where: str) -> None:
    """Refuse saved entries (name -> shape) that are missing, extra or of another shape than `expected`."""
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise IncompatibleAdapterError(
            f"The adapter in {where} does not fit this model: {len(missing)} missing entries "
            f"(e.g. {missing[:2]}) and {len(unexpected)} unexpected ones (e.g. {unexpected[:2]}). "
            "It was probably made for another architecture or with other targets."
        )
    for key, shape in saved.items():
        if tuple(shape) != tuple(expected[key]):
            raise IncompatibleAdapterError(
                f"The adapter in {where} has {key} of shape {tuple(shape)}, but this model needs "
                f"{tuple(expected[key])}: it was made for a model of another size, or its adapter_config.json (r, "
                "size, number of tokens) does not match its weights; load it into its own base model, or save it again."
            )
