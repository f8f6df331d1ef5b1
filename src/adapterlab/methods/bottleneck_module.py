"""The bottleneck adapter module: down (in -> size), activation, up (size -> out), scaled and placed on the input,
in series or in parallel with its site (the four residual cells of `methods/bottleneck.py`'s docstring)."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..core.adapter import Adapter
from ..errors import AdapterError

NORM_EPS = 1e-6  # MoSA's AdaptFormer/Pfeiffer adapter_norm


class BottleneckShape(Protocol):
    """The options a bottleneck module is built from (`bottleneck.BottleneckOptions` has them all)."""

    size: int
    activation: str
    bias: bool
    init: str
    scaling: float | str
    dropout: float
    dropout_at: str
    layer_norm: bool
    residual: bool


class BottleneckAdapter(Adapter):
    """down (in -> size), activation, up (size -> out), scaled and added to the site's output."""

    split_points = {"down": "down", "up": "up"}  # the projections MoSA may split (methods/mosa.py)

    def __init__(self, in_features: int, out_features: int, options: BottleneckShape, placement: str,
                 device: torch.device, dtype: torch.dtype, projections: tuple[nn.Module, nn.Module] | None = None
                 ) -> None:
        """`projections`: (down, up) built by the method (Compacter's PHM layers), each initialised by itself; the
        default is two nn.Linear layers initialised by `options.init`."""
        super().__init__()
        self.placement = placement
        self.residual = options.residual
        self.norm = nn.LayerNorm(in_features, eps=NORM_EPS, device=device, dtype=dtype) if options.layer_norm else None
        self.dropout = nn.Dropout(options.dropout) if options.dropout > 0 else nn.Identity()
        self.dropout_at = options.dropout_at
        self.drops = options.dropout > 0  # an Identity is not called: at batch 1 each module call is a visible cost
        if projections is None:
            projections = (nn.Linear(in_features, options.size, bias=options.bias, device=device, dtype=dtype),
                           nn.Linear(options.size, out_features, bias=options.bias, device=device, dtype=dtype))
        self.down, self.up = projections
        self.act = ACT2FN[options.activation]
        if options.scaling == "learned":
            self.scaling = nn.Parameter(torch.ones(1, device=device, dtype=dtype))
        else:
            self.scaling = float(options.scaling)
        self.reset_parameters(options.init)

    @torch.no_grad()
    def reset_parameters(self, init: str) -> None:
        """bert or zero on nn.Linear projections; a method's own projections keep their init, except that "zero"
        zeroes the up projection's weight (`zero_weight`), so that the adapter starts as the identity."""
        if type(self.down) is not nn.Linear:
            if init == "zero":
                self.up.zero_weight()
            return
        if init == "bert":
            nn.init.normal_(self.down.weight, std=0.02)
            nn.init.normal_(self.up.weight, std=0.02)
        else:
            nn.init.kaiming_uniform_(self.down.weight, a=5 ** 0.5)
            nn.init.zeros_(self.up.weight)
        for layer in (self.down, self.up):
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def delta(self, h: torch.Tensor) -> torch.Tensor:
        """s * up(act(down(h))), with the optional input norm and the dropout where chosen, in the adapter's dtype."""
        h = self.cast_in(h)
        if self.norm is not None:
            h = self.norm(h)
        if self.drops and self.dropout_at == "input":
            h = self.dropout(h)
        return self.after_down(self.down(h))

    def after_down(self, h: torch.Tensor) -> torch.Tensor:
        """s * up(act(h)), h the down-projection's output, with the dropout if it acts on the hidden units."""
        h = self.act(h)
        if self.drops and self.dropout_at == "hidden":
            h = self.dropout(h)
        return self.up(h) * self.scaling

    def down_projection(self) -> nn.Linear | None:
        """down, shareable with the parallel adapters beside it, where nothing acts on the input before it now."""
        plain = type(self.down) is nn.Linear and self.norm is None and self.placement == "parallel"
        drawn = self.drops and self.training and self.dropout_at == "input"
        return self.down if plain and not drawn else None

    def adapt_output_after_down(self, x: torch.Tensor, y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        out = y + self.after_down(h).to(y.dtype)
        return out + x.to(y.dtype) if self.residual else out

    def branch(self, x: torch.Tensor | None, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The pieces a composer (AdapterFusion) combines at an output site: (what the adapter reads, its scaled
        branch s * f(.) (AdapterHub's `up`), what the branch is added to, or None without the identity term), so that
        `adapt_output(x, y)` is base + branch (the branch alone where base is None)."""
        if self.placement == "series":
            return y, self.delta(y).to(y.dtype), (y if self.residual else None)
        if self.placement == "parallel":
            return x, self.delta(x).to(y.dtype), (y + x.to(y.dtype) if self.residual else y)
        raise AdapterError("A bottleneck adapter placed on a layer's input (input_targets) has no output branch to "
                           "compose; compose adapters placed on outputs.")

    def changes_input(self) -> bool:
        return self.placement == "input"

    def changes_output(self) -> bool:
        return self.placement != "input"

    def reads_input(self) -> bool:
        return self.placement == "parallel"

    def adapt_input(self, x: torch.Tensor) -> torch.Tensor:
        """Input placement: the host layer reads x + s * f(x) (s * f(x) without the residual)."""
        if self.placement != "input":
            return x
        delta = self.delta(x).to(x.dtype)
        return x + delta if self.residual else delta

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The four cells of the module docstring: series F + s f(F) or s f(F); parallel F + s f(x) (+ x)."""
        if self.placement == "input":
            return y
        if self.placement == "series":
            delta = self.delta(y).to(y.dtype)
            return y + delta if self.residual else delta
        out = y + self.delta(x).to(y.dtype)
        return out + x.to(y.dtype) if self.residual else out
