"""Continuous batching: a row leaves the batch the step it finishes (or is cancelled) and a waiting prompt takes
its place, so a batch never decodes for rows that are done (eval's greedy decoding; `adapterlab serve`).

One DynamicCache holds the running rows, left-padded to a common length. A newcomer is prefilled alone (exactly
its batch-1 prefill), then its cache is padded and joined to the batch on every layer; a finished row is removed
by an index select on every layer, the mask and the pending tokens, and columns that have become padding in every
row are dropped. Each decode step is the model's own forward with the padding mask and per-row position ids
(the count of a row's real tokens, as generate() derives them). Columns in front of the prompt that an adapter put
in the cache (prompt or prefix tuning's virtual tokens) stay in front; padding goes after them. Rows whose adapters put
different counts there (per-row adapters) get masked pads before their own, as a mixed-adapter call lays them out.

Each request may carry its own sampling (evaluate.sampling: temperature, top_p, its own seeded generator), its own
adapter (passed per row as `adapter_names=` when the batcher is built with `per_row_adapters`), a callback that
sees each token as it is chosen (streaming) and a `cancelled` flag that another thread may set (a client gone).
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ..errors import UsageError
from .sampling import Sampling, next_tokens

BASE = "__base__"  # the adapter name that runs a row on the bare base model


@dataclass
class Request:
    """One prompt to decode: `key` names it in the results; `stop(generated ids)` says a stop string is complete.

    `sampling` None is greedy; `adapter` None is the base model (used with `per_row_adapters`); `on_token(request,
    token)` runs on each token as it is chosen; setting `cancelled` (from any thread) ends the request at the next
    step. `finish` says why it ended: "stop" (EOS or stop string), "length" or "cancelled".
    """

    key: Any
    ids: list[int]
    max_new_tokens: int
    stop: Callable[[list[int]], bool] | None = None
    out: list[int] = field(default_factory=list)
    sampling: Sampling | None = None
    adapter: str | None = None
    on_token: Callable[[Request, int], None] | None = None
    cancelled: bool = False
    finish: str | None = None


def _pad_columns(x: torch.Tensor, at: int, count: int, dim: int) -> torch.Tensor:
    """`x` with `count` zero columns inserted at index `at` of dimension `dim`."""
    if count == 0:
        return x
    shape = list(x.shape)
    shape[dim] = count
    return torch.cat([x.narrow(dim, 0, at), x.new_zeros(shape), x.narrow(dim, at, x.shape[dim] - at)], dim=dim)


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers, each a plain DynamicLayer (sliding, static or linear-attention layers are refused)."""
    layers = list(cache.layers)
    if any(type(layer) is not DynamicLayer for layer in layers):
        kinds = sorted({type(layer).__name__ for layer in layers})
        raise UsageError(f"Continuous batching needs a cache of plain DynamicLayers; this model's has {kinds}.")
    return layers


class ContinuousBatcher:
    """Decoding of many requests with rows leaving and joining the batch between steps.

    `max_rows` caps the rows decoded together; `max_tokens` (optional) caps the padded cache, rows x columns, that a
    newcomer may join (one row is always admitted). Requests are admitted in the order they are added.
    `per_row_adapters`: every forward gets `adapter_names=` (each row's adapter, BASE for none), so rows of
    different adapters share the batch; without it the model runs whatever adapters are active.
    """

    def __init__(self, model: Any, *, eos_ids: Iterable[int], max_rows: int, max_tokens: int | None = None,
                 per_row_adapters: bool = False) -> None:
        if max_rows < 1 or (max_tokens is not None and max_tokens < 1):
            raise UsageError(f"max_rows ({max_rows}) and max_tokens ({max_tokens}) must be at least 1.")
        self.model, self.eos, self.max_rows, self.max_tokens = model, set(eos_ids), max_rows, max_tokens
        self.per_row_adapters = per_row_adapters
        self.device = next(model.parameters()).device
        names = set(inspect.signature(model.forward).parameters)
        self.positions = "position_ids" in names
        self.last_only = {"logits_to_keep": 1} if "logits_to_keep" in names else {}
        self.waiting: deque[Request] = deque()
        self.rows: list[Request] = []
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)  # (rows, columns) of the cache
        self.front = 0  # columns before the prompt (virtual tokens; a row with fewer has masked pads first)
        self.pending = torch.zeros(0, dtype=torch.long, device=self.device)  # each row's newest token, not cached yet

    def add(self, request: Request) -> None:
        """Queue `request`; it joins the batch when a row is free and the token budget allows."""
        if request.max_new_tokens < 1 or not request.ids:
            raise UsageError(f"Request {request.key!r}: needs prompt tokens and max_new_tokens >= 1.")
        self.waiting.append(request)

    def busy(self) -> bool:
        """Whether any request is running or waiting."""
        return bool(self.rows or self.waiting)

    def abort(self) -> list[Request]:
        """Drop every running and waiting request (after a failed step, or at shutdown) and return them."""
        dropped = [*self.rows, *self.waiting]
        self.waiting.clear()
        self._keep([])
        return dropped

    def _adapters(self, rows: list[Request]) -> dict[str, Any]:
        """The forward's per-row adapter argument, when the batcher passes one."""
        return {"adapter_names": [r.adapter or BASE for r in rows]} if self.per_row_adapters else {}

    def run(self) -> Iterator[list[Request]]:
        """Decode until every request is done, yielding the requests that finished at each step (if any)."""
        while self.busy():
            done = self.step()
            if done:
                yield done

    def step(self) -> list[Request]:
        """Admit what fits, decode one token for every running row, and return the requests that finished.

        Everything runs in inference mode, the cache edits between steps included: the cache, mask and tokens stay
        inference tensors, which a compiled forward (`--compile`) would otherwise recompile for when they change kind.
        """
        with torch.inference_mode():
            return self._step()

    def _step(self) -> list[Request]:
        done = self._drop_cancelled()
        done += self._admit()
        if not self.rows:
            return done
        mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        extra = {"position_ids": self.mask[:, self.front:].sum(1, keepdim=True)} if self.positions else {}
        out = self.model(input_ids=self.pending[:, None], attention_mask=mask, past_key_values=self.cache,
                         use_cache=True, **extra, **self.last_only, **self._adapters(self.rows))
        self.cache, self.mask = out.past_key_values, mask
        tokens = next_tokens(out.logits[:, -1], [row.sampling for row in self.rows])
        self.pending = torch.tensor(tokens, dtype=torch.long, device=self.device)
        finished = [self._emit(row, token) for row, token in zip(self.rows, tokens)]
        if any(finished):
            done += [row for row, end in zip(self.rows, finished) if end]
            self._keep([i for i, end in enumerate(finished) if not end])
        return done

    def _drop_cancelled(self) -> list[Request]:
        """Remove the cancelled requests, waiting or running, and return them (finish "cancelled")."""
        gone = [r for r in self.waiting if r.cancelled]
        if gone:
            self.waiting = deque(r for r in self.waiting if not r.cancelled)
        running = [r for r in self.rows if r.cancelled]
        if running:
            self._keep([i for i, r in enumerate(self.rows) if not r.cancelled])
        gone += running
        for request in gone:
            request.finish = "cancelled"
        return gone

    def _emit(self, row: Request, token: int) -> bool:
        """Append `token` to the row's output (and show it to `on_token`); whether the row is finished (EOS, stop
        string or length), with `finish` set to why."""
        row.out.append(token)
        if token in self.eos or (row.stop is not None and row.stop(row.out)):
            row.finish = "stop"
        elif len(row.out) >= row.max_new_tokens:
            row.finish = "length"
        if row.on_token is not None:
            row.on_token(row, token)
        return row.finish is not None

    def _fits(self, request: Request) -> bool:
        """Whether `request` may join: a free row, and the padded cache after joining within the token budget."""
        if not self.rows:
            return True
        if len(self.rows) >= self.max_rows:
            return False
        width = max(self.mask.shape[1] - self.front, len(request.ids)) + 1
        return self.max_tokens is None or (len(self.rows) + 1) * width <= self.max_tokens

    def _admit(self) -> list[Request]:
        """Prefill waiting requests that fit and join them to the batch; those done at their first token return."""
        done = []
        while self.waiting and self._fits(self.waiting[0]):
            request = self.waiting.popleft()
            ids = torch.tensor([request.ids], dtype=torch.long, device=self.device)
            extra = {"position_ids": torch.arange(ids.shape[1], device=self.device)[None]} if self.positions else {}
            out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=DynamicCache(),
                             use_cache=True, **extra, **self.last_only, **self._adapters([request]))
            token = next_tokens(out.logits[:, -1], [request.sampling])[0]
            if self._emit(request, token):
                done.append(request)
            else:
                self._join(request, out.past_key_values, token)
        return done

    def _join(self, request: Request, cache: DynamicCache, token: int) -> None:
        """Left-pad the newcomer's cache or the batch's to a common length and concatenate them on every layer."""
        front = cache.get_seq_length() - len(request.ids)
        _layers(cache)
        mask = torch.ones(1, front + len(request.ids), dtype=torch.long, device=self.device)
        pending = torch.tensor([token], device=self.device)
        if self.cache is None:
            self.cache, self.mask, self.front, self.pending, self.rows = cache, mask, front, pending, [request]
            return
        if front != self.front:  # rows of virtual-token adapters with other counts: pads first, masked
            cache, mask = self._pad_front(cache, mask, self.front - front), self._pad_front_mask(mask, self.front - front)
            self._pad_batch_front(front - self.front)
            front = self.front
        old, new = self.mask.shape[1] - front, len(request.ids)
        width = max(old, new)
        for mine, theirs in zip(_layers(self.cache), _layers(cache)):
            for name in ("keys", "values"):
                a = _pad_columns(getattr(mine, name), front, width - old, dim=-2)
                b = _pad_columns(getattr(theirs, name), front, width - new, dim=-2)
                setattr(mine, name, torch.cat([a, b], dim=0))
        self.mask = torch.cat([_pad_columns(self.mask, front, width - old, dim=1),
                               _pad_columns(mask, front, width - new, dim=1)], dim=0)
        self.pending = torch.cat([self.pending, pending])
        self.rows.append(request)

    @staticmethod
    def _pad_front(cache: DynamicCache, mask: torch.Tensor, count: int) -> DynamicCache:
        """A newcomer's cache with `count` (if > 0) pad columns before its virtual tokens (`_pad_front_mask` masks
        them), as a mixed-adapter call lays out a row with fewer virtual tokens than the longest (methods/virtual_rows.py)."""
        if count > 0:
            for layer in _layers(cache):
                layer.keys, layer.values = (_pad_columns(layer.keys, 0, count, -2),
                                            _pad_columns(layer.values, 0, count, -2))
        return cache

    @staticmethod
    def _pad_front_mask(mask: torch.Tensor, count: int) -> torch.Tensor:
        return _pad_columns(mask, 0, count, 1) if count > 0 else mask

    def _pad_batch_front(self, count: int) -> None:
        """Give the running rows `count` (if > 0) more masked front columns: a newcomer has more virtual tokens."""
        if count > 0:
            self._pad_front(self.cache, self.mask, count)
            self.mask = self._pad_front_mask(self.mask, count)
            self.front += count

    def _keep(self, keep: list[int]) -> None:
        """Keep only rows `keep` (index select on every layer) and drop the columns now padding in every row."""
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache, self.front = None, 0
            self.mask = self.mask[:0, :0]
            self.pending = self.pending[:0]
            return
        index = torch.tensor(keep, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask, self.pending = self.mask[index], self.pending[index]
        used = self.mask[:, self.front:].any(0).nonzero()
        start = int(used[0]) if len(used) else 0  # first column that holds a real token in some row
        if start:
            front = self.front
            for layer in _layers(self.cache):
                layer.keys = torch.cat([layer.keys[..., :front, :], layer.keys[..., front + start:, :]], dim=-2)
                layer.values = torch.cat([layer.values[..., :front, :], layer.values[..., front + start:, :]], dim=-2)
            self.mask = torch.cat([self.mask[:, :front], self.mask[:, front + start:]], dim=1)
