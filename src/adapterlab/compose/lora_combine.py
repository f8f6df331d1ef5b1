"""PEFT's combination types for LoRA (`LoraModel.add_weighted_adapter`, PEFT 0.21), site by site.

The new adapter's rank and alpha, as PEFT sets them (alpha = rank, so its scaling alpha / r is 1):

* linear, ties, dare_linear, dare_ties, magnitude_prune: every adapter must have one rank r; the new rank is r.
  A and B are combined apart (`task_vectors.combine`), adapter i's weight taken as c_i = w_i * (alpha_i / r_i)
  and split between them: A with sign(c_i) sqrt|c_i|, B with sqrt|c_i|. So "linear" gives
  (sum_i sqrt|c_i| B_i)(sum_i sign(c_i) sqrt|c_i| A_i), whose cross terms B_i A_j make it NOT the weighted sum of
  the updates (PEFT's docs call it "a very rough approximation"); cat and svd are exact.
* cat: the new rank is the sum of the ranks; A stacks the rows w_i (alpha_i / r_i) A_i, B the columns B_i, so the
  update is exactly sum_i w_i Delta_i. Ranks may differ.
* svd, ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd: the updates Delta_i = (alpha_i / r_i) B_i A_i
  are combined as the type without "_svd" says (svd: linear), then cut to rank svd_rank (default: the largest
  rank) by a truncated SVD U S Vh: B = U S, A = Vh; svd_clamp (a quantile q) clips both to [-x, x], x the
  q-quantile of their entries.

At a layer that only some of the adapters adapt, only those are combined there (PEFT's union of targets). Layers
are visited in the model's module order and, at each, A's tensors before B's, adapter by adapter: the order of
PEFT's DARE draws. The new adapter's A is drawn (Kaiming) when it is attached, before any mask, as PEFT's injected
one is, so one torch seed gives one result in both.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import AdapterError
from ..methods.lora import LoraAdapter, LoraConfig
from .task_vectors import combine

FACTORED = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
SVD = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
LORA_TYPES = (*FACTORED, "cat", *SVD)


def new_rank(kind: str, ranks: list[int], svd_rank: int | None) -> int:
    """The combined adapter's rank for combination `kind` (see the module docstring)."""
    if kind in FACTORED:
        if len(set(ranks)) != 1:
            raise AdapterError(f"combination_type={kind!r} combines A and B entry by entry, so the LoRAs must share "
                               f"one rank; theirs are {ranks}. Use 'cat' or an '_svd' type for different ranks.")
        return ranks[0]
    if kind == "cat":
        return sum(ranks)
    return svd_rank or max(ranks)


def new_config(first: LoraConfig, rank: int, targets: list[str] | None, layers: list[int] | None) -> LoraConfig:
    """The combined adapter's config: the first adapter's dropout, rank = alpha = `rank` (scaling 1)."""
    return LoraConfig(targets=targets, layers=layers, r=rank, alpha=float(rank), dropout=first.dropout)


def check_svd_rank(rank: int, members: list[LoraAdapter], path: str) -> None:
    """Refuse an SVD rank above what the layer's update can have (PEFT would fail on a shape mismatch)."""
    a = members[0]
    limit = min(a.lora_A.in_features, a.lora_B.out_features)
    if rank > limit:
        raise AdapterError(f"svd_rank {rank} exceeds the rank an update of {path!r} can have ({limit}); pass "
                           f"svd_rank <= {limit}.")


@torch.no_grad()
def combine_site(kind: str, members: list[tuple[LoraAdapter, float]], new: LoraAdapter, path: str, *,
                 density: float | None, sign_method: str, svd_clamp: float | None, full_matrices: bool,
                 driver: str | None) -> None:
    """Set `new`'s A and B at one layer from `members` (the adapters there, with their weights) by `kind`."""
    target_a, target_b = new.lora_A.weight, new.lora_B.weight
    if kind == "cat":
        a = torch.cat([m.lora_A.weight * w * m.scaling for m, w in members], dim=0)
        b = torch.cat([m.lora_B.weight for m, _ in members], dim=1)
        target_a.zero_()
        target_b.zero_()
        target_a[: a.shape[0]] = a.to(target_a.dtype)
        target_b[:, : b.shape[1]] = b.to(target_b.dtype)
        return
    if kind in FACTORED:
        a, b = _factored(kind, members, density, sign_method)
    else:
        check_svd_rank(target_a.shape[0], [m for m, _ in members], path)
        a, b = _svd(kind, members, target_a.shape[0], density, sign_method, svd_clamp, full_matrices, driver)
    target_a.copy_(a.to(target_a.dtype))
    target_b.copy_(b.to(target_b.dtype))


def _factored(kind: str, members: list[tuple[LoraAdapter, float]], density: float | None,
              sign_method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A and B combined apart, each adapter's weight w * scaling split as sqrt between them (sign on A)."""
    on_a, on_b = [], []
    for adapter, weight in members:
        c = weight * adapter.scaling
        on_a.append(math.sqrt(abs(c)) * (1 if c >= 0 else -1))
        on_b.append(math.sqrt(abs(c)))
    device = members[0][0].lora_A.weight.device
    a = combine(kind, [m.lora_A.weight for m, _ in members], torch.tensor(on_a).to(device), density, sign_method)
    b = combine(kind, [m.lora_B.weight for m, _ in members], torch.tensor(on_b).to(device), density, sign_method)
    return a, b


def _svd(kind: str, members: list[tuple[LoraAdapter, float]], rank: int, density: float | None, sign_method: str,
         clamp: float | None, full_matrices: bool, driver: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The combined update's truncated SVD as (A, B) = (Vh, U S), clipped at the `clamp` quantile if given."""
    deltas = [m.delta_weight() for m, _ in members]
    weights = torch.tensor([w for _, w in members]).to(deltas[0].device)
    base = "linear" if kind == "svd" else kind[: -len("_svd")]
    delta = combine(base, deltas, weights, density, sign_method)
    u, s, vh = torch.linalg.svd(delta, full_matrices=full_matrices, driver=driver)
    u = u[:, :rank] @ torch.diag(s[:rank])
    vh = vh[:rank, :]
    if clamp is not None:
        high = torch.quantile(torch.cat([u.flatten(), vh.flatten()]), clamp)
        u, vh = u.clamp(-high, high), vh.clamp(-high, high)
    return vh, u


def members_at(host: nn.Module, slot: str, names: list[str], weights: list[float]) -> list[tuple[LoraAdapter, float]]:
    """The named LoRAs placed at `host` (in the order named), with their weights."""
    placed = host._modules[slot]
    return [(placed[n], w) for n, w in zip(names, weights) if n in placed]


__all__ = ["FACTORED", "LORA_TYPES", "SVD", "check_svd_rank", "combine_site", "members_at", "new_config", "new_rank"]
