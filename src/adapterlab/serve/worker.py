"""The one thread that runs the model: it takes requests and adapter loads from thread-safe queues and decodes in
continuous batches (evaluate.scheduler), so a request that arrives while others decode joins at the next step.

Rows of every adapter and of the base share one batch: each forward names each row's adapter (`adapter_names=`,
core/row_routing.py), prompt and P-tuning rows included (their virtual tokens, of any count, sit in front of the
prompt in the cache, padded per row). Prompt and prefix rows rewrite the call in different ways (`core.row_calls.
call_kind`), so while the shared batch holds one of them the other gets a batch of its own; batches take turns, one
decode step each.

Each request reports back through `notify(kind, value)`, called on this thread: ("token", id) per token, then
("done", finish reason) or ("error", message).
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.engine import adapter_names
from ..core.row_calls import call_kind
from ..evaluate.scheduler import ContinuousBatcher, Request
from .adapters import Registry, Served
from .protocol import ApiError

Notify = Callable[[str, Any], None]


@dataclass
class Job:
    """A request on its way through the worker, with the callback that reports on it."""

    request: Request
    served: Served | None
    notify: Notify
    started: bool = False


class Worker:
    """Runs requests and adapter changes on one background thread; `max_rows` rows per batch, at most
    `max_queue` requests accepted but not yet decoding (more are refused with 503)."""

    def __init__(self, model: Any, registry: Registry, *, eos_ids: list[int], max_rows: int, max_queue: int) -> None:
        self.model, self.registry, self.eos = model, registry, eos_ids
        self.max_rows, self.max_queue = max_rows, max_queue
        self.inbox: queue.Queue[Job | tuple[Callable[[], Any], concurrent.futures.Future]] = queue.Queue()
        self.batchers: dict[str, ContinuousBatcher] = {}
        self.kinds: dict[str, str] = {}  # engine name -> call_kind
        self.jobs: dict[int, Job] = {}  # id(request) -> job, for every request in a batcher
        self.lock = threading.Lock()
        self.queued = 0  # accepted, not yet decoding
        self.cancelled = 0  # requests whose client went away before they finished
        self.stopping = threading.Event()
        self.give_up = False
        self.thread = threading.Thread(target=self._loop, name="adapterlab-serve-worker", daemon=True)

    # ---- called from the server's threads
    def start(self) -> None:
        self.thread.start()

    def submit(self, request: Request, served: Served | None, notify: Notify) -> None:
        """Queue `request` for adapter `served` (None: base); a full queue is a 503 with Retry-After."""
        if self.stopping.is_set():
            raise ApiError(503, "The server is shutting down.", headers={"Retry-After": "5"})
        with self.lock:
            if self.queued >= self.max_queue:
                raise ApiError(503, f"The queue is full ({self.max_queue} requests waiting); retry shortly.",
                               headers={"Retry-After": "1"})
            self.queued += 1
        request.adapter = served.engine_name if served else None
        request.on_token = self._on_token
        self.inbox.put(Job(request, served, notify))

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn` on the worker thread between two decode steps (adapter loads and unloads)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.inbox.put((fn, future))
        return future

    def counts(self) -> dict[str, int]:
        """Rows decoding, requests waiting and requests cancelled so far, for /health."""
        running = sum(len(b.rows) for b in list(self.batchers.values()))
        return {"running": running, "waiting": self.queued, "cancelled": self.cancelled}

    def in_use(self, served: Served) -> int:
        """How many requests use `served`, decoding or waiting (worker thread only)."""
        return sum(1 for job in self.jobs.values() if job.served is served)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is running (at most `timeout` seconds), fail the rest, and end the thread."""
        self.stopping.set()
        self.inbox.put(None)
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.give_up = True  # the loop ends after its current step; what is left fails there
            self.thread.join()

    # ---- the worker thread
    def _on_token(self, request: Request, token: int) -> None:
        job = self.jobs[id(request)]
        if not job.started:
            job.started = True
            with self.lock:
                self.queued -= 1
        self._tell(job, "token", token)

    def _tell(self, job: Job, kind: str, value: Any) -> None:
        try:
            job.notify(kind, value)
        except Exception:  # the client's event loop is gone: nobody is listening any more
            job.request.cancelled = True

    def _end(self, request: Request, kind: str, value: Any) -> None:
        job = self.jobs.pop(id(request))
        if not job.started:
            with self.lock:
                self.queued -= 1
        self._tell(job, kind, value)

    def _group(self, served: Served | None) -> str:
        """Which batch a request joins: the shared one ("") unless its adapter rewrites the model's call in a way
        (`call_kind`: prompt tuning, prefix tuning) that the shared batch's rows already rewrite another way; then
        the batch of its kind."""
        kind = self._kind(served.engine_name) if served is not None and served.virtual_tokens else ""
        shared = self.batchers.get("")
        if not kind or shared is None:
            return ""
        kinds = {self._kind(r.adapter) for r in [*shared.rows, *shared.waiting] if r.adapter} - {""}
        return "" if kinds <= {kind} else kind

    def _kind(self, engine_name: str) -> str:
        """`call_kind` of a served adapter, looked up once (engine names are never reused)."""
        if engine_name not in self.kinds:
            self.kinds[engine_name] = call_kind(self.model, engine_name)
        return self.kinds[engine_name]

    def _take(self, item: Any) -> None:
        if item is None:  # stop() waking the loop
            return
        if isinstance(item, Job):
            if item.served is not None and self.registry.served.get(item.served.name) is not item.served:
                self.jobs[id(item.request)] = item  # unloaded after the request named it
                self._end(item.request, "error", f"Adapter {item.served.name!r} was unloaded.")
                return
            key = self._group(item.served)
            if key not in self.batchers:
                self.batchers[key] = ContinuousBatcher(self.model, eos_ids=self.eos, max_rows=self.max_rows)
            self.jobs[id(item.request)] = item
            self.batchers[key].add(item.request)
            return
        fn, future = item
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to the caller, who answers the client
            future.set_exception(exc)

    def _busy(self) -> bool:
        return any(b.busy() for b in self.batchers.values())

    def _loop(self) -> None:
        while True:
            try:
                self._take(self.inbox.get() if not self._busy() else self.inbox.get_nowait())
                while True:
                    self._take(self.inbox.get_nowait())
            except queue.Empty:
                pass
            if self.give_up or (self.stopping.is_set() and not self._busy()):
                break
            for batcher in list(self.batchers.values()):
                if batcher.busy():
                    self._step(batcher)
            idle = [key for key, batcher in self.batchers.items() if not batcher.busy()]
            for key in idle:
                del self.batchers[key]
        for batcher in self.batchers.values():
            for request in batcher.abort():
                self._end(request, "error", "The server shut down before this request finished.")

    def _step(self, batcher: ContinuousBatcher) -> None:
        try:
            batcher.per_row_adapters = bool(adapter_names(self.model))  # a model without adapters takes no names
            done = batcher.step()
        except Exception as exc:  # a failed forward fails its batch, never the server
            for request in batcher.abort():
                self._end(request, "error", f"Decoding failed: {type(exc).__name__}: {exc}")
            return
        for request in done:
            self.cancelled += request.finish == "cancelled"
            self._end(request, "done", request.finish)
