"""One generation request from submission to answer: the context limit it must fit, the worker request it becomes,
and the answer as one JSON body or as OpenAI's server-sent events (ending `data: [DONE]`). A client that goes away
cancels its request, which frees its row at the next step.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..evaluate.sampling import Sampling
from ..evaluate.scheduler import Request
from ..evaluate.stopping import StopOnText
from .adapters import Served
from .protocol import ApiError
from .text import TextStream
from .worker import Worker

POLL_S = 0.25  # how often a request waiting for tokens checks that its client is still there


@dataclass
class Limits:
    """The model's context length (None: unknown) and vocabulary size, which prompts are checked against."""

    context: int | None
    vocab: int

    @classmethod
    def of(cls, model: Any, tokenizer: Any) -> Limits:
        text = model.config.get_text_config(decoder=True)
        context = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
        if not isinstance(context, int):
            length = getattr(tokenizer, "model_max_length", None)
            context = length if isinstance(length, int) and length < 10**8 else None
        return cls(context, int(model.get_input_embeddings().num_embeddings))

    def check_ids(self, ids: list[int]) -> None:
        if not ids:
            raise ApiError(400, "The prompt is empty; give at least one token.", "prompt")
        if any(not isinstance(i, int) or not 0 <= i < self.vocab for i in ids):
            raise ApiError(400, f"prompt: token ids must lie in [0, {self.vocab}).", "prompt")
        if self.context is not None and len(ids) >= self.context:
            raise ApiError(400, f"This model's maximum context length is {self.context} tokens; the prompt has "
                                f"{len(ids)}. Shorten the prompt.", "prompt", "context_length_exceeded")

    def max_tokens(self, ids: list[int], asked: int | None) -> int:
        """`asked`, or the rest of the context when not given; more than the context holds is refused."""
        room = None if self.context is None else self.context - len(ids)
        if asked is None:
            return room if room is not None else 256
        if room is not None and asked > room:
            raise ApiError(400, f"This model's maximum context length is {self.context} tokens; the prompt has "
                                f"{len(ids)} and max_tokens asks for {asked} more. Lower max_tokens or shorten the "
                                "prompt.", "max_tokens", "context_length_exceeded")
        return asked


class Generation:
    """A completion ("text") or chat completion ("chat") request: submit it, then answer in one body or a stream."""

    def __init__(self, worker: Worker, tokenizer: Any, http: HttpRequest, served: Served | None, body: Any,
                 ids: list[int], max_tokens: int, kind: str) -> None:
        self.worker, self.http, self.served, self.body, self.kind = worker, http, served, body, kind
        stops = body.stop_strings()
        self.text = TextStream(tokenizer, stops)
        self.request = Request(uuid.uuid4().hex, ids, max_tokens, StopOnText(tokenizer, stops, 0).stops if stops else None,
                               sampling=Sampling(body.temperature, body.top_p, body.seed))
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + self.request.key
        self.created = int(time.time())
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.notify = lambda kind, value: loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    async def respond(self) -> Response:
        self.worker.submit(self.request, self.served, self.notify)  # a full queue refuses here, before any answer
        if self.body.stream:
            return StreamingResponse(self._sse(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        text, finish = [], None
        async for kind, value in self._events():
            if kind == "text":
                text.append(value)
            else:
                finish = value
        return JSONResponse(self._body("".join(text), finish))

    async def _events(self) -> AsyncIterator[tuple[str, Any]]:
        """("text", delta) as text becomes final, then ("finish", reason); a worker error is an ApiError."""
        ended, loop = False, asyncio.get_running_loop()
        checked = loop.time()
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(self.queue.get(), POLL_S)
                except asyncio.TimeoutError:
                    kind = None
                # a stream learns of a client gone when Starlette cancels it; a plain answer asks, now and then
                if not self.body.stream and loop.time() - checked >= POLL_S:
                    checked = loop.time()
                    if await self.http.is_disconnected():
                        return
                if kind is None:
                    continue
                if kind == "token":
                    delta = self.text.push(value)
                    if delta:
                        yield "text", delta
                elif kind == "done":
                    ended, rest = True, self.text.finish()
                    if rest:
                        yield "text", rest
                    yield "finish", value
                    return
                else:
                    ended = True
                    raise ApiError(500, value)
        finally:
            if not ended:  # the client left (or the response was cancelled): free the row
                self.request.cancelled = True

    def _usage(self) -> dict[str, int]:
        prompt, completion = len(self.request.ids), len(self.request.out)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _body(self, text: str, finish: str | None) -> dict[str, Any]:
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {"id": self.id, "object": "chat.completion" if self.kind == "chat" else "text_completion",
                "created": self.created, "model": self.body.model, "choices": [choice], "usage": self._usage()}

    def _chunk(self, text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        if self.kind == "chat":
            delta = ({"role": "assistant", "content": ""} if first else {} if text is None else {"content": text})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {"id": self.id, "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
                "created": self.created, "model": self.body.model, "choices": [choice]}

    async def _sse(self) -> AsyncIterator[str]:
        event = lambda data: f"data: {json.dumps(data)}\n\n"
        if self.kind == "chat":
            yield event(self._chunk(None, None, first=True))
        try:
            async for kind, value in self._events():
                yield event(self._chunk(value, None) if kind == "text" else self._chunk(None, value))
        except ApiError as exc:
            yield event(exc.body())
        else:
            if self.body.stream_options is not None and self.body.stream_options.include_usage:
                yield event({**self._chunk(None, None), "choices": [], "usage": self._usage()})
        yield "data: [DONE]\n\n"
