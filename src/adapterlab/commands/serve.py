"""`adapterlab serve`: an OpenAI-compatible server for a base model and its adapters, in continuous batches.

    adapterlab serve --model smollm2-135m --adapter math=runs/smol-lora --adapter chat=runs/smol-ia3 --port 8000
    adapterlab serve --model smollm2-135m --lora-modules math=runs/smol-lora --adapter-root runs
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import MissingPathError, UsageError
from ..models import load_model

DEFAULT_ROWS = 16
DEFAULT_QUEUE = 64


def parse_adapter(spec: str, flag: str) -> tuple[str, str]:
    """NAME=PATH as (name, path)."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise UsageError(f"{flag} {spec!r}: give NAME=PATH, e.g. {flag} math=runs/smol-lora.")
    return name, path


def check_args(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The adapters to load at start, after every flag that cannot work is refused by name."""
    adapters = [parse_adapter(s, "--adapter") for s in args.adapter or []]
    adapters += [parse_adapter(s, "--lora-modules") for s in args.lora_modules or []]
    names = [name for name, _ in adapters]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"Adapter name(s) {', '.join(twice)} given twice; give each adapter its own name.")
    for flag, value, least in (("--max-rows", args.max_rows, 1), ("--max-queue", args.max_queue, 1),
                               ("--port", args.port, 0)):
        if value < least or (flag == "--port" and value > 65535):
            raise UsageError(f"{flag} {value}: must be at least {least}" + (" and at most 65535." if flag == "--port"
                                                                             else "."))
    if args.adapter_root is not None and not Path(args.adapter_root).is_dir():
        raise MissingPathError(f"--adapter-root {args.adapter_root}: no such folder; create it or name another.")
    for name, path in adapters:
        if not Path(path).is_dir():
            raise MissingPathError(f"--adapter {name}={path}: no such folder; pass an adapter or training run folder.")
    return adapters


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..evaluate.generate import eos_ids
    from ..serve import Registry, Worker, create_app
    from ..serve.protocol import ApiError

    adapters = check_args(args)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    registry = Registry(model, args.adapter_root)
    for name, path in adapters:
        try:
            registry.load(name, path, confined=False)
        except ApiError as exc:
            raise UsageError(f"--adapter {name}={path}: {exc.message}") from None
    worker = Worker(model, registry, eos_ids=eos_ids(model, tokenizer), max_rows=args.max_rows,
                    max_queue=args.max_queue)
    app = create_app(model, tokenizer, registry, worker, model_name=args.model)
    print(f"adapterlab serve: {args.model} with {', '.join(registry.names())} on http://{args.host}:{args.port}",
          flush=True)
    uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level)).run()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a model and its adapters over an OpenAI-compatible HTTP API, in continuous batches",
        description="OpenAI-compatible server (/v1/completions, /v1/chat/completions, /v1/models, vLLM's "
                    "/v1/load_lora_adapter and /v1/unload_lora_adapter), with a page at / to compare adapters. "
                    "Clients pick an adapter by its name as `model` ('base' is the bare base model); requests of "
                    "any adapter join the running batch at the next decode step.")
    parser.add_argument("--model", required=True, help="the base model: hub id, local folder, .gguf file or short name")
    parser.add_argument("--adapter", action="append", metavar="NAME=PATH",
                        help="serve the adapter (adapter or training run folder) in PATH as NAME (repeatable)")
    parser.add_argument("--lora-modules", nargs="+", action="extend", metavar="NAME=PATH",
                        help="vLLM's spelling of --adapter (any adapterlab method or PEFT adapter)")
    parser.add_argument("--adapter-root", metavar="DIR",
                        help="the folder /v1/load_lora_adapter may load from (paths outside it, symlinks resolved, "
                             "are refused); without it loading at run time is refused")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: any free port)")
    parser.add_argument("--max-rows", type=int, default=DEFAULT_ROWS,
                        help=f"rows decoded together in one batch (default {DEFAULT_ROWS})")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_QUEUE,
                        help=f"requests accepted while waiting for a row (default {DEFAULT_QUEUE}); more are refused "
                             "with 503 and Retry-After")
    parser.add_argument("--dtype", help="load the model in this dtype (float32, bfloat16, float16; default: "
                                        "transformers' default)")
    parser.add_argument("--device", help="device to run on (cpu, cuda, cuda:1, mps; default: where the model loads)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                        help="uvicorn's log level (default info)")
    parser.set_defaults(func=serve)
