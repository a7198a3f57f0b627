"""Periodic checkpoints of a distributed run, and resuming from the latest complete one.

A checkpoint (torch.distributed.checkpoint, one directory per step) holds the model
(original keys, tables as ShardedTensors), the optimizer state (dense and fused), the data
position (the last finished step: batches are a function of the step) and every rank's RNG
state. `DIR/latest` names the newest complete checkpoint: it is written by rank 0 only after
every rank finished saving (a barrier), to a temporary file then `os.replace`d, so it names
either the previous checkpoint or the new one, never a half-written one, whichever rank is
killed whenever. A step directory newer than the marker is a save that did not finish: a
restore skips it (one warning line) and the next save of that step starts it afresh.
The protocol and the kill trials that test it: docs/reliability.md.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torchrec.optim.keyed import KeyedOptimizerWrapper

from dmt_fx.ir.errors import DMTError

LATEST = "latest"
_STEP_DIR = re.compile(r"step_(\d{8})$")


def _state(module: torch.nn.Module, optimizer: Any, step: int) -> dict[str, Any]:
    rank = dist.get_rank()
    # Per-rank key: DCP deduplicates equal keys across ranks, and RNG states may differ.
    return {"model": module.state_dict(), "optimizer": optimizer.state_dict(),
            "step": torch.tensor(step), f"rng_rank{rank}": torch.get_rng_state()}


def step_dir(directory: str, step: int) -> str:
    return os.path.join(directory, f"step_{step:08d}")


def save(directory: str, step: int, module: torch.nn.Module, optimizer: Any) -> None:
    """Every rank: write the checkpoint of finished step `step`, then mark it latest."""
    path = step_dir(directory, step)
    if dist.get_rank() == 0 and os.path.exists(path):  # left by a save that was killed: start afresh
        shutil.rmtree(path)
    dist.barrier()
    dcp.save(_state(module, optimizer, step), checkpoint_id=path)
    dist.barrier()  # every rank's files and rank 0's .metadata are written
    if dist.get_rank() == 0:
        _write_marker(directory, os.path.basename(path))
    dist.barrier()


def _write_marker(directory: str, name: str) -> None:
    tmp = os.path.join(directory, f".{LATEST}.tmp")
    with open(tmp, "w") as handle:
        handle.write(name)
        handle.flush()
        os.fsync(handle.fileno())  # the marker never names a checkpoint its bytes did not reach disk before
    os.replace(tmp, os.path.join(directory, LATEST))


def latest(directory: str) -> str | None:
    """The step directory `DIR/latest` names, or None when no checkpoint completed."""
    marker = os.path.join(directory, LATEST)
    if not os.path.exists(marker):
        return None
    with open(marker) as handle:
        path = os.path.join(directory, handle.read().strip())
    if not os.path.exists(os.path.join(path, ".metadata")):
        raise DMTError(f"{marker} names {path}, which has no DCP .metadata (deleted or moved?)",
                       "the checkpoint the marker names, as the job wrote it",
                       [f"restore {path}", f"or point {marker} at another complete step_* directory",
                        f"or remove {marker} to start from step 0"])
    return path


def partial_saves(directory: str, complete: str | None) -> list[str]:
    """Step directories newer than the complete one: saves a crash interrupted."""
    newest = _step_of(complete) if complete else -1
    found = [os.path.join(directory, n) for n in sorted(os.listdir(directory)) if _STEP_DIR.match(n)]
    return [p for p in found if _step_of(p) > newest]


def _step_of(path: str) -> int:
    match = _STEP_DIR.search(os.path.basename(path))
    assert match is not None, path  # only step_* directories are passed here
    return int(match.group(1))


def restore(directory: str, module: torch.nn.Module, optimizer: Any) -> int:
    """Every rank: load the latest complete checkpoint if there is one; return the next step to run."""
    os.makedirs(directory, exist_ok=True)
    path = latest(directory)
    skipped = partial_saves(directory, path)
    if skipped and dist.get_rank() == 0:
        print(f"dmt-fx: skipping partial checkpoint {', '.join(skipped)} (a save that did not finish); "
              f"resuming from {path or 'step 0'}", file=sys.stderr, flush=True)
    if path is None:
        return 0
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
