"""The options of `add_weighted_adapter` (PEFT's names), checked against the combination type they belong to:
an option the type does not read is refused by name rather than ignored (PEFT ignores it)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from ..errors import AdapterError
from .lora_combine import LORA_TYPES, SVD
from .task_vectors import SIGN_METHODS

PRUNING = ("ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd", "magnitude_prune",
           "magnitude_prune_svd")
SIGN_ELECTING = ("ties", "ties_svd", "dare_ties", "dare_ties_svd")
SVD_DRIVERS = ("gesvd", "gesvdj", "gesvda")


@dataclass(frozen=True)
class CombineOptions:
    """A checked combination: the type and what it reads (defaults filled in: "total", full matrices)."""

    kind: str
    density: float | None = None
    sign_method: str = "total"
    svd_rank: int | None = None
    svd_clamp: float | None = None
    full_matrices: bool = True
    driver: str | None = None


def check_options(kind: Any, *, density: Any = None, majority_sign_method: Any = None, svd_rank: Any = None,
                  svd_clamp: Any = None, svd_full_matrices: Any = None, svd_driver: Any = None) -> CombineOptions:
    """The options as a CombineOptions, or an AdapterError naming the one that is wrong and the fix."""
    if kind not in LORA_TYPES:
        raise AdapterError(f"Unknown combination_type {kind!r}; use one of {', '.join(LORA_TYPES)}.")
    given = {"density": density, "majority_sign_method": majority_sign_method, "svd_rank": svd_rank,
             "svd_clamp": svd_clamp, "svd_full_matrices": svd_full_matrices, "svd_driver": svd_driver}
    reads = {"density": kind in PRUNING, "majority_sign_method": kind in SIGN_ELECTING,
             **{k: kind in SVD for k in ("svd_rank", "svd_clamp", "svd_full_matrices", "svd_driver")}}
    unread = [k for k, v in given.items() if v is not None and not reads[k]]
    if unread:
        raise AdapterError(f"combination_type={kind!r} does not use {', '.join(unread)}; drop it, or pick a type "
                           f"that does ({_users(unread[0])}).")
    if kind in PRUNING:
        if density is None:
            raise AdapterError(f"combination_type={kind!r} needs density, the fraction of entries kept (0 < density "
                               "<= 1), e.g. density=0.5.")
        if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
            raise AdapterError(f"density must be a number in (0, 1] (the fraction of entries kept), got {density!r}.")
    if majority_sign_method is not None and majority_sign_method not in SIGN_METHODS:
        raise AdapterError(f"majority_sign_method must be one of {list(SIGN_METHODS)}, got {majority_sign_method!r}.")
    if svd_rank is not None and (isinstance(svd_rank, bool) or not isinstance(svd_rank, int) or svd_rank <= 0):
        raise AdapterError(f"svd_rank must be a positive integer, got {svd_rank!r}.")
    if svd_clamp is not None and (isinstance(svd_clamp, bool) or not isinstance(svd_clamp, (int, float))
                                  or not 0 <= svd_clamp <= 1 or math.isnan(svd_clamp)):
        raise AdapterError(f"svd_clamp is a quantile in [0, 1] (e.g. 0.99), got {svd_clamp!r}.")
    if svd_full_matrices is not None and not isinstance(svd_full_matrices, bool):
        raise AdapterError(f"svd_full_matrices must be True or False, got {svd_full_matrices!r}.")
    if svd_driver is not None and svd_driver not in SVD_DRIVERS:
        raise AdapterError(f"svd_driver must be one of {list(SVD_DRIVERS)} (cuSOLVER's; CUDA only), got "
                           f"{svd_driver!r}.")
    return CombineOptions(kind, None if density is None else float(density), majority_sign_method or "total",
                          svd_rank, None if svd_clamp is None else float(svd_clamp),
                          True if svd_full_matrices is None else svd_full_matrices, svd_driver)


def _users(option: str) -> str:
    """The combination types that read `option`, for messages."""
    if option == "density":
        return ", ".join(PRUNING)
    if option == "majority_sign_method":
        return ", ".join(SIGN_ELECTING)
    return ", ".join(SVD)


def check_weights(weights: Any, count: int) -> list[float]:
    """The weights as floats, one per adapter, each finite (negative ones subtract an adapter, as in PEFT)."""
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__len__"):
        raise AdapterError(f"weights must be a list of numbers, one per adapter, got {weights!r}.")
    weights = list(weights)
    if len(weights) != count:
        raise AdapterError(f"{len(weights)} weight(s) for {count} adapter(s); give one weight per adapter.")
    if any(isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) for w in weights):
        raise AdapterError(f"weights must be finite numbers, got {weights!r}.")
    return [float(w) for w in weights]


__all__ = ["CombineOptions", "PRUNING", "SIGN_ELECTING", "check_options", "check_weights"]
