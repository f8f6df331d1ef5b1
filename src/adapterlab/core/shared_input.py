"""One matmul for the down-projections of adapters that read the same input (q, k, v read the attention's normed
input; gate and up the MLP's): their weights are concatenated, the input is multiplied once, and each adapter gets
its slice.

Any adapter can take part by saying which linear layer it applies first to its (dtype-cast) site input
(`Adapter.down_projection`: LoRA's A, a parallel bottleneck's down) and by finishing from that layer's output
(`Adapter.adapt_output_after_down`). `attach(..., fuse_inputs=True)` groups one adapter's module sites by block and
by the input they read (`input_groups`); the first member's hook in a forward computes every member's slice, the
others take theirs. Nothing is assumed at run time: a member that receives another tensor than the one its group
computed for makes the group fall back to one matmul per adapter for good (a family whose k and v read another
stream, such as cross-attention), and a member whose first step is not a plain linear layer now (dropout drawn on
its input in training, a norm in front, MoSA's split layer) computes on its own.

Dropout: a LoRA with dropout > 0 in training draws one mask per module (as PEFT does) and so is computed on its own
in training; sharing one mask across q, k and v would change what is trained. In eval mode, or with dropout 0, the
fused result is the unfused one up to float rounding of the wider matmul (the tests compare with assert_close).
IA3 has no down-projection (it scales features elementwise) and series adapters read their own site's output, so
neither takes part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..errors import AdapterError

if TYPE_CHECKING:
    from torch import nn

    from .adapter import Adapter
    from .sites import Placement, Site

INPUT_ROLES = {"q": "attn_in", "k": "attn_in", "v": "attn_in", "gate": "mlp_in", "up": "mlp_in"}


class SharedDown:
    """The adapters of one group and, within one forward, the slices computed for those that have not run yet."""

    def __init__(self, members: list[Adapter]) -> None:
        self.members = members
        self.off = False  # set for good once a member saw another input than its group's
        self._reset()

    def _reset(self) -> None:
        self.x: torch.Tensor | None = None
        self.parts: dict[int, torch.Tensor] = {}
        self._cached: tuple[tuple, torch.Tensor, torch.Tensor | None] | None = None

    def __getstate__(self) -> dict[str, Any]:  # deepcopy and pickling: members, never tensors of a forward
        return {"members": self.members, "off": self.off}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def down(self, adapter: Adapter, x: torch.Tensor) -> torch.Tensor | None:
        """`adapter`'s down-projection of x, computed with the group's; None: compute it on its own."""
        if self.off:
            return None
        if x is self.x:  # a slice the first member computed (None: computed alone)
            part = self.parts.pop(id(adapter), None)
            if not self.parts:
                self.x = None
            return part
        if self.parts:  # a member of the last forward never came for its slice: they read different inputs
            self.off = True
            self.x, self.parts = None, {}
            return None
        runs = [(m, m.down_projection()) for m in self.members if m is adapter or _runs_now(m)]
        if len(runs) < 2 or any(layer is None for m, layer in runs if m is adapter):
            return None
        runs = [(m, layer) for m, layer in runs if layer is not None]
        weight, bias = self._weights([layer for _, layer in runs])
        if weight is None:
            return None
        h = F.linear(adapter.cast_in(x), weight, bias)
        parts = h.split([layer.out_features for _, layer in runs], dim=-1)
        self.parts = {id(m): part for (m, _), part in zip(runs, parts) if m is not adapter}
        self.x = x if self.parts else None
        return next(part for (m, _), part in zip(runs, parts) if m is adapter)

    def _weights(self, layers: list[nn.Linear]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The concatenated weight and bias; None where the layers differ in dtype or device or in having a bias.
        Without autograd the concatenation is kept until a weight changes (its version counter) or is replaced."""
        weights = [layer.weight for layer in layers]
        biases = [layer.bias for layer in layers]
        if len({(w.dtype, w.device) for w in weights}) > 1 or len({b is None for b in biases}) > 1:
            return None, None
        tensors = weights + [b for b in biases if b is not None]
        if torch.is_grad_enabled():
            return torch.cat(weights), None if biases[0] is None else torch.cat(biases)
        key = tuple((id(t), t._version) for t in tensors)
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, torch.cat(weights), None if biases[0] is None else torch.cat(biases))
        return self._cached[1], self._cached[2]


def _runs_now(adapter: Adapter) -> bool:
    """Whether a member's hook will run in this forward (hooked, and its gate, if any, open)."""
    return adapter._hooks_on and (adapter.gate is None or adapter.gate.runs())


def input_groups(sites: list[Site], adapters: list[Adapter], placement: Placement) -> None:
    """Give the adapters at module sites that read one input (same block, INPUT_ROLES) a shared `SharedDown`
    (`adapter._shared`); adapters without a down-projection, or alone in their group, get none."""
    try:
        arch = placement.architecture
        blocks = placement.blocks
    except AdapterError:  # module-name targets on a model without an architecture: nothing is known to share
        return
    paths = {f"{blocks[i]}.{arch.projection(role)}": (i, group) for i in range(len(blocks))
             for role, group in INPUT_ROLES.items() if arch.projection(role)}
    groups: dict[tuple[int, str], list[Adapter]] = {}
    for site, adapter in zip(sites, adapters):
        key = paths.get(site.path) if site.kind == "module" else None
        if key is not None and adapter.down_projection() is not None:
            groups.setdefault(key, []).append(adapter)
    for members in groups.values():
        if len(members) > 1:
            shared = SharedDown(members)
            for adapter in members:
                adapter._shared = shared


__all__ = ["INPUT_ROLES", "SharedDown", "input_groups"]
