"""A linear layer split into N sparse modules that train one at a time and merge into one (MoSA's building block).

The N modules share one initial weight and own disjoint random sets of its entries that together cover it
(drawn once at attach from the `seed` option and the layer's name, so a resumed or distributed run rebuilds
the same masks). Module i is the initial weight with its own entries
replaced by trained values; in training each forward uses one module, drawn per step (see `stochastic.py`),
so only that module's entries get a gradient. Each module keeps a full bias. The merged layer is the mean of
the N modules, the expected value of the random forward, and is what eval mode, `merge` and `save_adapter` use:

    merged weight = ((N - 1) * initial + trained entries of all modules) / N,   merged bias = mean of the biases

Storage is one value per entry (each module's own entries as one flat parameter), so parameters, gradients and
optimizer state take no more than the plain layer's. A module not drawn in a step has no gradient and is not
touched by the optimizer (no momentum, no weight decay), as N dense copies trained with
`zero_grad(set_to_none=True)` would be. Weight decay reaches only the drawn module's own entries: the rest is the
shared initial weight, owned by no module (dense copies would decay the drawn copy's frozen entries too, which
differs only where the initial weight is not zero: a split down-projection). The initial weight is regenerated
from a seed, not stored: zeros for an up-projection, Kaiming-uniform (a = sqrt 5) for a down-projection, as
AdaptFormer and LoRA initialise them.
"""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AdapterError
from ..core.stochastic import Stochastic

INITS = ("zeros", "kaiming")


class SplitLinear(Stochastic):
    """Drop-in for an nn.Linear inside an adapter: `forward(x)`, and `weight` / `bias` give the merged layer."""

    def __init__(self, linear: nn.Linear, modules: int, key: str, init: str, seed: int = 0) -> None:
        super().__init__(key)
        if init not in INITS:
            raise AdapterError(f"split init must be one of {INITS}, got {init!r}.")
        self.n, self.init, self.shape = modules, init, tuple(linear.weight.shape)
        numel = linear.weight.numel()
        if numel < modules:
            raise AdapterError(f"{key}: a {self.shape} weight has {numel} entries, too few for {modules} modules "
                               "that each own at least one; use fewer modules.")
        # masks and initial values: a function of (seed, key) alone, so a resumed or distributed run rebuilds them
        self.seed = zlib.crc32(f"{seed}|{key}".encode())
        generator = torch.Generator().manual_seed(self.seed)
        owner = torch.empty(numel, dtype=torch.uint8, device="cpu")  # on the CPU even when built on meta
        order = torch.randperm(numel, generator=generator, device="cpu")
        owner[order] = (torch.arange(numel, device="cpu") % modules).to(torch.uint8)
        device, dtype = linear.weight.device, linear.weight.dtype
        self.register_buffer("owner", owner.to(device), persistent=False)
        initial = self.initial(device=torch.device("cpu"), dtype=dtype).flatten()
        self.parts = nn.ParameterList(
            nn.Parameter(torch.empty(int((owner == i).sum()), device=device, dtype=dtype)
                         if device.type == "meta" else initial[owner == i].to(device)) for i in range(modules))
        self.biases = None if linear.bias is None else nn.ParameterList(
            nn.Parameter(linear.bias.detach().clone()) for _ in range(modules))

    def initial(self, device: torch.device | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The shared initial weight, regenerated from the seed (never stored)."""
        device = device or self.owner.device
        dtype = dtype or self.parts[0].dtype
        if self.init == "zeros":
            return torch.zeros(self.shape, device=device, dtype=dtype)
        weight = torch.empty(self.shape, device="cpu")
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=torch.Generator().manual_seed(self.seed + 1))
        return weight.to(device=device, dtype=dtype)

    def _entries(self, i: int) -> torch.Tensor:
        return (self.owner == i).nonzero().squeeze(1)

    def module_weight(self, i: int) -> torch.Tensor:
        """Module i: the initial weight with module i's own entries (differentiable in those entries only)."""
        return self.initial().flatten().index_put((self._entries(i),), self.parts[i]).view(self.shape)

    @property
    def weight(self) -> torch.Tensor:
        """The merged weight: the mean of the N modules."""
        initial = self.initial()
        trained = initial.flatten().clone()
        for i, part in enumerate(self.parts):
            trained[self._entries(i)] = part
        return ((self.n - 1) * initial + trained.view(self.shape)) / self.n

    @property
    def bias(self) -> torch.Tensor | None:
        """The merged bias: the mean of the modules' biases."""
        return None if self.biases is None else torch.stack(list(self.biases)).mean(0)

    def collapsed_state(self) -> dict[str, torch.Tensor]:
        """The state of the plain nn.Linear this layer merges into (what `save_adapter` writes)."""
        state = {"weight": self.weight.detach()}
        if self.biases is not None:
            state["bias"] = self.bias.detach()
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self.weight, self.bias)
        draws = self.current_draws(self.seed)
        if x.shape[0] % draws.groups:
            raise AdapterError(f"{self.draw_key}: a batch of {x.shape[0]} does not split into {draws.groups} "
                               "forward groups; the training loss must pass that many copies of the batch.")
        outputs = []
        for group, chunk in enumerate(x.chunk(draws.groups) if draws.groups > 1 else (x,)):
            i = draws.choice(self.draw_key, self.n, group)
            bias = None if self.biases is None else self.biases[i]
            outputs.append(F.linear(chunk, self.module_weight(i), bias))
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def extra_repr(self) -> str:
        return f"shape={self.shape}, modules={self.n}, init={self.init}"


__all__ = ["SplitLinear"]
