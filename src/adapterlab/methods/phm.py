"""Parameterized hypercomplex multiplication (PHM) layers (Zhang et al., ICLR 2021), as Compacter uses them
(Karimi Mahabadi et al., NeurIPS 2021; rabeehk/compacter, AdapterHub's `PHMLayer`).

A PHM layer's weight is a sum of n Kronecker products, H = sum_k A_k (x) W_k: A (n, n, n) the "rules" (shared by
every layer of an adapter by default), W (n, in/n, out/n) the layer's own, factorized as W_k = s_k t_k of rank r by
default. The layer computes y = x H + b with H of shape (in, out), as theirs (x @ H, not x @ H.T).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from ..core.shared_params import hold

W_INITS = ("glorot-uniform", "glorot-normal", "normal")
RULE_INITS = ("normal", "uniform")


class PHMShape(Protocol):
    """The options a PHM layer is built from (`compacter.CompacterOptions` has them all)."""

    phm_dim: int
    phm_rank: int
    factorized_phm_W: bool
    factorized_phm_rule: bool
    learn_phm: bool
    phm_c_init: str
    phm_init_range: float
    hypercomplex_nonlinearity: str


def kronecker_sum(rules: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_k kron(rules[k], weights[k]): rules (n, a, b), weights (n, p, q) -> (a * p, b * q)."""
    n, a, b = rules.shape
    _, p, q = weights.shape
    return torch.einsum("kab,kpq->apbq", rules, weights).reshape(a * p, b * q)


class PHMRule(nn.Module):
    """The n rule matrices A (n, n, n), or their rank-1 factors (n, n, 1) x (n, 1, n); a buffer unless learned."""

    def __init__(self, options: PHMShape, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        n, self.factorized = options.phm_dim, options.factorized_phm_rule
        shapes = {"left": (n, n, 1), "right": (n, 1, n)} if self.factorized else {"rule": (n, n, n)}
        for key, shape in shapes.items():
            tensor = torch.empty(shape, device=device, dtype=dtype)
            if options.phm_c_init == "normal":
                nn.init.normal_(tensor, std=options.phm_init_range)
            else:  # AdapterHub's shared rule: U(-1, 1)
                nn.init.uniform_(tensor, -1.0, 1.0)
            if options.learn_phm:
                self.register_parameter(key, nn.Parameter(tensor))
            else:
                self.register_buffer(key, tensor)

    def forward(self) -> torch.Tensor:
        return torch.bmm(self.left, self.right) if self.factorized else self.rule


class PHMWeight(nn.Module):
    """The n weight blocks W (n, in/n, out/n), or their rank-r factors (n, in/n, r) x (n, r, out/n)."""

    def __init__(self, in_per_axis: int, out_per_axis: int, options: PHMShape, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        n, r, self.factorized = options.phm_dim, options.phm_rank, options.factorized_phm_W
        shapes = ({"left": (n, in_per_axis, r), "right": (n, r, out_per_axis)} if self.factorized
                  else {"weight": (n, in_per_axis, out_per_axis)})
        for key, shape in shapes.items():
            self.register_parameter(key, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
        self.reset_parameters(options)

    @torch.no_grad()
    def reset_parameters(self, options: PHMShape) -> None:
        """Each of the n blocks (each factor) drawn on its own, as theirs: Glorot per 2-D slice, or N(0, range)."""
        for tensor in self.parameters():
            for block in tensor:
                if options.hypercomplex_nonlinearity == "glorot-uniform":
                    nn.init.xavier_uniform_(block)
                elif options.hypercomplex_nonlinearity == "glorot-normal":
                    nn.init.xavier_normal_(block)
                else:
                    nn.init.normal_(block, std=options.phm_init_range)

    @torch.no_grad()
    def zero_(self) -> None:
        """Make the layer's weight zero (the right factor, or W), so that it outputs its bias alone."""
        nn.init.zeros_(self.right if self.factorized else self.weight)

    def forward(self) -> torch.Tensor:
        return torch.bmm(self.left, self.right) if self.factorized else self.weight


class PHMLayer(nn.Module):
    """y = x H + b, H = sum_k A_k (x) W_k. The rule A and the weight W are the layer's own, or modules shared by all
    layers of the adapter (held by reference: they live once in the model, `core/shared_params.py`)."""

    def __init__(self, in_features: int, out_features: int, options: PHMShape, bias: bool = True,
                 rule: PHMRule | None = None, weight: PHMWeight | None = None,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        n = options.phm_dim
        self.in_features, self.out_features = in_features, out_features
        if rule is None:
            self.rule = PHMRule(options, device, dtype)
        else:
            hold(self, "rule", rule)
        if weight is None:
            self.weight = PHMWeight(in_features // n, out_features // n, options, device, dtype)
        else:
            hold(self, "weight", weight)
        self.register_parameter("bias", nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype))
                                if bias else None)

    def zero_weight(self) -> None:
        """H = 0: the layer outputs its bias alone (the up projection of an adapter that starts as the identity)."""
        self.weight.zero_()

    def matrix(self) -> torch.Tensor:
        """H (in, out)."""
        return kronecker_sum(self.rule(), self.weight())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.matrix())
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class PHMShared(nn.Module):
    """What all PHM layers of one adapter share (AdapterHub's `init_shared_parameters`): the rule (`rule`), and with
    shared weights the down and up blocks (`W_down`, `W_up`: width -> size and back)."""

    def __init__(self, options: PHMShape, share_rule: bool, weight_shapes: dict[str, tuple[int, int]] | None,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if share_rule:
            self.rule = PHMRule(options, device, dtype)
        n = options.phm_dim
        for position, (in_features, out_features) in (weight_shapes or {}).items():
            self.add_module(f"W_{position}", PHMWeight(in_features // n, out_features // n, options, device, dtype))

    def part(self, name: str) -> nn.Module | None:
        """The shared `rule`, `W_down` or `W_up`, or None where that one is each layer's own."""
        return self._modules.get(name)
