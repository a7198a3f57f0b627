"""Periodic checkpoints of a distributed run, and resuming from the latest one.

A checkpoint (torch.distributed.checkpoint, one directory per step) holds the model
(original keys, tables as ShardedTensors), the optimizer state (dense and fused), the data
position (the last finished step: batches are a function of the step) and every rank's RNG
state. `DIR/latest` names the newest complete checkpoint; it is written by rank 0 after all
ranks finished saving, and replaced atomically, so a crash mid-save leaves the previous one.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torchrec.optim.keyed import KeyedOptimizerWrapper

LATEST = "latest"


def _state(module: torch.nn.Module, optimizer: Any, step: int) -> dict[str, Any]:
    rank = dist.get_rank()
    # Per-rank key: DCP deduplicates equal keys across ranks, and RNG states may differ.
    return {"model": module.state_dict(), "optimizer": optimizer.state_dict(),
            "step": torch.tensor(step), f"rng_rank{rank}": torch.get_rng_state()}


def save(directory: str, step: int, module: torch.nn.Module, optimizer: Any) -> None:
    """Every rank: write the checkpoint of finished step `step`, then mark it latest."""
    path = os.path.join(directory, f"step_{step:08d}")
    dcp.save(_state(module, optimizer, step), checkpoint_id=path)
    dist.barrier()
    if dist.get_rank() == 0:
        tmp = os.path.join(directory, f".{LATEST}.tmp")
        with open(tmp, "w") as handle:
            handle.write(os.path.basename(path))
        os.replace(tmp, os.path.join(directory, LATEST))
    dist.barrier()


def restore(directory: str, module: torch.nn.Module, optimizer: Any) -> int:
    """Every rank: load the latest checkpoint if there is one; return the next step to run."""
    marker = os.path.join(directory, LATEST)
    if not os.path.exists(marker):
        os.makedirs(directory, exist_ok=True)
        return 0
    with open(marker) as handle:
        path = os.path.join(directory, handle.read().strip())
    _init_lazy_state(optimizer)
    state = _state(module, optimizer, 0)
    dcp.load(state, checkpoint_id=path)
    module.load_state_dict(state["model"])
    # dcp.load already filled the live state tensors in place; this restores the rest
    # (param groups, non-tensor entries).
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state[f"rng_rank{dist.get_rank()}"])
    return int(state["step"]) + 1


def _init_lazy_state(optimizer: Any) -> None:
    """Give a dense optimizer whose state is made on its first step (Adam) that state, so
    DCP can load the checkpoint into it in place. TorchRec's `init_state` steps with zero
    gradients; whatever that step moves, the load that follows overwrites."""
    for _, part in getattr(optimizer, "optimizers", [("", optimizer)]):
        if isinstance(part, KeyedOptimizerWrapper) and not part.state:
            part.init_state()
