"""Combining task tensors (several adapters' versions of one weight) into one: task arithmetic, TIES, DARE and
magnitude pruning, as PEFT's `utils/merge_utils.py` defines them, so that `add_weighted_adapter` gives PEFT's result.

Each takes the tensors (all of one shape) and their weights and returns one tensor:

* linear (task arithmetic, Ilharco et al. 2023): sum_i w_i t_i.
* magnitude_prune: each t_i keeps its int(density * numel) largest-magnitude entries, then the weighted sum.
* ties (Yadav et al. 2023): magnitude-pruned as above; an elected sign per entry (the sign of sum_i t_i with
  "total", of sum_i sign(t_i) with "frequency"; a tie elects +); the mean of the weighted entries that carry the
  elected sign (pruned zeros carry none; an entry no tensor keeps is 0).
* dare_linear / dare_ties (Yu et al. 2024): each t_i keeps every entry with probability `density` (a Bernoulli
  mask drawn from torch's global generator, one draw per tensor, in the order given) and is rescaled by 1/density,
  then the weighted sum / TIES' sign election and disjoint mean.

density == 1 prunes nothing and draws nothing (as PEFT, which warns); the sign election reads the pruned but
unweighted tensors (PEFT's order: weights are applied after the election).
"""

from __future__ import annotations

import torch

SIGN_METHODS = ("total", "frequency")


def weighted_sum(tensors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i t_i over the stacked tensors (dim 0)."""
    return (tensors * _per_tensor(weights, tensors)).sum(dim=0)


def _per_tensor(weights: torch.Tensor, tensors: torch.Tensor) -> torch.Tensor:
    """The weights shaped (n, 1, 1, ...) to broadcast over the stacked tensors."""
    return weights.reshape(weights.shape + (1,) * (tensors.dim() - 1))


def keep_largest(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """`tensor` with all but its int(density * numel) largest-magnitude entries set to zero."""
    if density >= 1:
        return tensor
    kept = torch.topk(tensor.abs().reshape(-1), k=int(density * tensor.numel()), largest=True).indices
    mask = torch.zeros_like(tensor).reshape(-1)
    mask[kept] = 1
    return tensor * mask.reshape(tensor.shape)


def drop_and_rescale(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """DARE: each entry kept with probability `density` (torch's global generator), the rest zero, divided by it."""
    if density >= 1:
        return tensor
    keep = torch.bernoulli(torch.full_like(tensor, density))
    return tensor * keep / density


def elected_sign_mask(tensors: torch.Tensor, method: str) -> torch.Tensor:
    """Where each stacked tensor's entry has the sign elected across them (TIES' step 2)."""
    signs = tensors.sign()
    votes = tensors.sum(dim=0) if method == "total" else signs.sum(dim=0)
    elected = torch.where(votes >= 0, 1, -1)
    return signs == elected


def disjoint_mean(weighted: torch.Tensor, agree: torch.Tensor) -> torch.Tensor:
    """The mean, per entry, of the weighted entries whose sign agrees with the elected one (0 where none does)."""
    count = agree.sum(dim=0).clamp(min=1.0)
    return (weighted * agree).sum(dim=0) / count


def combine(kind: str, tensors: list[torch.Tensor], weights: torch.Tensor, density: float | None,
            sign_method: str) -> torch.Tensor:
    """One of linear, magnitude_prune, ties, dare_linear, dare_ties (see the module docstring) over `tensors`."""
    if kind == "linear":
        return weighted_sum(torch.stack(tensors), weights)
    prune = keep_largest if kind in ("ties", "magnitude_prune") else drop_and_rescale
    stacked = torch.stack([prune(t, density) for t in tensors])
    if kind in ("magnitude_prune", "dare_linear"):
        return weighted_sum(stacked, weights)
    agree = elected_sign_mask(stacked, sign_method)
    return disjoint_mean(stacked * _per_tensor(weights, stacked), agree)


__all__ = ["SIGN_METHODS", "combine", "disjoint_mean", "drop_and_rescale", "elected_sign_mask", "keep_largest",
           "weighted_sum"]
