"""Sharded training engines for adapters: FSDP2 (`fully_shard`) and DeepSpeed ZeRO, as accelerate hands them over.

`accelerate launch --config_file examples/accelerate/fsdp.yaml -m adapterlab train ...` puts the engine in the
environment (ACCELERATE_USE_FSDP / ACCELERATE_USE_DEEPSPEED) and the HF Trainer builds it; adapterlab adds no flag.
FSDP2 shards each parameter on its own, so a frozen base beside trainable adapters in one unit needs nothing more,
and the Trainer's optimizer holds the trainable parameters only. What this module adds: refusing a request that
would silently turn into something else (accelerate runs FSDP and DeepSpeed on accelerators only and falls back
to DDP on the CPU; FSDP1 cannot gather adapters alone), and `whole_trainable`, which gathers the trainable
parameters (never the base) on every rank so that an adapter is saved, loaded or copied as in one process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import UsageError

FSDP, DEEPSPEED = "FSDP", "DeepSpeed"
CONFIGS = "examples/accelerate/"


def requested_engine() -> str | None:
    """The sharded engine the launcher asked for through accelerate's environment (None: plain DDP or one process)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return FSDP
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return DEEPSPEED
    return None


def check_engine_request(full_model: bool) -> None:
    """Before anything is loaded: refuse an engine this run cannot use, naming the fix."""
    engine = requested_engine()
    if engine is None:
        return
    if full_model:
        raise UsageError(f"{engine} is set up for adapter training here; --adapter full (and multi-task training) "
                         f"runs on one process or DDP: launch with {CONFIGS}ddp.yaml or torchrun instead.")
    if engine == FSDP and os.environ.get("FSDP_VERSION", "1") != "2":
        raise UsageError("FSDP1 (accelerate's default fsdp_version) wraps whole units and cannot gather or shard "
                         "adapter parameters apart from the frozen base; set `fsdp_version: 2` in the accelerate "
                         f"config ({CONFIGS}fsdp.yaml).")
    if engine == DEEPSPEED and importlib.util.find_spec("deepspeed") is None:
        raise UsageError("The accelerate config asks for DeepSpeed, which is not installed; install it "
                         "(pip install 'adapterlab[deepspeed]', on a machine with a GPU and a CUDA toolkit) or "
                         f"launch with {CONFIGS}fsdp.yaml or {CONFIGS}ddp.yaml.")


def check_engine_enabled(trainer) -> None:
    """After the Trainer is built: the engine asked for is the one accelerate set up (not a silent DDP on the CPU)."""
    engine = requested_engine()
    enabled = {FSDP: trainer.is_fsdp_enabled, DEEPSPEED: trainer.is_deepspeed_enabled}.get(engine, True)
    if not enabled:
        raise UsageError(f"The accelerate config asks for {engine}, but accelerate did not build it here (it builds "
                         f"{engine} on GPUs or other accelerators only, FSDP with several processes) and would "
                         f"train without it; on the CPU launch with {CONFIGS}ddp.yaml or torchrun, on one GPU drop "
                         "the config.")
    if engine == FSDP and getattr(trainer.accelerator.state.fsdp_plugin, "fsdp_version", 1) != 2:
        raise UsageError("This accelerate builds FSDP1 although the config asks for fsdp_version 2; FSDP2 needs "
                         "accelerate >= 1.6 (pip install -U accelerate).")


def _sharded(model: nn.Module) -> list[tuple[nn.Module, str, nn.Parameter]]:
    """The trainable parameters held as FSDP2 shards (DTensors), with the module and name that hold each."""
    from torch.distributed.tensor import DTensor

    return [(module, name, param) for module in model.modules()
            for name, param in module.named_parameters(recurse=False)
            if param.requires_grad and isinstance(param, DTensor)]


@contextlib.contextmanager
def whole_trainable(model: nn.Module, write_back: bool = False) -> Iterator[None]:
    """Inside the block every trainable parameter of `model` is whole on this rank: FSDP2 shards gathered, DeepSpeed
    ZeRO-3 partitions gathered (a no-op in one process, under DDP and ZeRO-1/2). Enter it on every rank (it
    gathers); only the trainable parameters travel, never the frozen base. `write_back`: values written inside
    (an adapter loaded) are sharded back on exit; otherwise they are dropped.
    """
    partitioned = [p for p in model.parameters() if p.requires_grad and hasattr(p, "ds_id")]
    if partitioned:  # ZeRO-3 (not run on this project's machines: DeepSpeed needs a GPU)
        import deepspeed

        with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0 if write_back else None):
            yield
        return
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        yield
        return
    sharded = _sharded(model)
    for module, name, shard in sharded:
        module._parameters[name] = nn.Parameter(shard.full_tensor(), requires_grad=True)
    try:
        yield
    finally:
        from torch.distributed.tensor import distribute_tensor

        for module, name, shard in sharded:
            whole = module._parameters[name]
            if write_back:
                with torch.no_grad():
                    shard.copy_(distribute_tensor(whole.detach(), shard.device_mesh, shard.placements))
            module._parameters[name] = shard


__all__ = ["DEEPSPEED", "FSDP", "check_engine_enabled", "check_engine_request", "requested_engine",
           "whole_trainable"]
