"""The HTTP side of `adapterlab serve`: OpenAI's completions and chat completions, vLLM's LoRA load/unload routes,
/v1/models, /health and the page at `/`. Routes are async; they hand requests to the worker thread (worker.py) and
read its reports from an asyncio queue each, so the event loop never runs the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request as HttpRequest
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from .adapters import BASE_NAME, Registry
from .protocol import ApiError, ChatRequest, CompletionRequest, LoadAdapter, UnloadAdapter, parse
from .streaming import Generation, Limits
from .text import chat_prompt
from .worker import Worker


def create_app(model: Any, tokenizer: Any, registry: Registry, worker: Worker, *, model_name: str) -> FastAPI:
    """The FastAPI app serving `model` with the adapters of `registry`; its lifespan starts and stops `worker`."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:  # uvicorn has let in-flight responses finish (SIGTERM): what is left fails cleanly
            await asyncio.to_thread(worker.stop)

    app = FastAPI(title="adapterlab serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    limits = Limits.of(model, tokenizer)
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def refused(_: HttpRequest, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(Exception)
    async def failed(_: HttpRequest, exc: Exception) -> JSONResponse:
        error = ApiError(500, f"Internal error: {type(exc).__name__}: {exc}")
        return JSONResponse(error.body(), status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **worker.counts()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        entry = lambda name, root, parent: {"id": name, "object": "model", "created": created, "owned_by": "adapterlab",
                                            "root": root, "parent": parent}
        data = [entry(BASE_NAME, model_name, None)]
        data += [entry(s.name, str(s.path), BASE_NAME) for s in list(registry.served.values())]
        return {"object": "list", "data": data}

    @app.post("/v1/completions")
    async def completions(http: HttpRequest) -> Response:
        body = parse(await http.body(), CompletionRequest)
        served = registry.get(body.model)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise ApiError(400, "prompt: give one prompt per request (a string or a list of token ids).", "prompt")
            prompt = prompt[0]
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"] if isinstance(prompt, str) else list(prompt)
        limits.check_ids(ids)
        run = Generation(worker, tokenizer, http, served, body, ids, limits.max_tokens(ids, body.max_tokens), "text")
        return await run.respond()

    @app.post("/v1/chat/completions")
    async def chat(http: HttpRequest) -> Response:
        body = parse(await http.body(), ChatRequest)
        served = registry.get(body.model)
        ids = chat_prompt(body.messages, served.template if served else None, tokenizer, body.model)
        limits.check_ids(ids)
        run = Generation(worker, tokenizer, http, served, body, ids,
                         limits.max_tokens(ids, body.max_completion_tokens or body.max_tokens), "chat")
        return await run.respond()

    @app.post("/v1/load_lora_adapter")
    async def load(http: HttpRequest) -> Response:
        body = parse(await http.body(), LoadAdapter)
        await asyncio.wrap_future(worker.call(lambda: registry.load(body.lora_name, body.lora_path, confined=True)))
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload(http: HttpRequest) -> Response:
        body = parse(await http.body(), UnloadAdapter)

        def remove() -> None:
            served = registry.get(body.lora_name)
            busy = worker.in_use(served) if served is not None else 0
            if busy:
                raise ApiError(409, f"Adapter {body.lora_name!r} has {busy} request(s) running or waiting; unload "
                                    "it when they have finished.", "lora_name")
            registry.unload(body.lora_name)

        await asyncio.wrap_future(worker.call(remove))
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    return app
