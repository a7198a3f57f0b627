"""Ending a DMT job so that it cannot hang at interpreter exit.

The hang: a rank's main thread ran
`ProcessGroupGloo`'s destructor, reached from DDP's `Reducer` being freed as `main`
returned or at interpreter exit. The destructor joins the group's gloo worker threads while
holding the GIL; a worker still finishing its last collective dropped the last reference to
a tensor whose Python object only C++ kept alive, and freeing that object needs the GIL.
Neither thread can go on. Whether it happens depends on which thread the scheduler runs
first after the last collective, hence the load dependence.

The fix takes the destructor out of the picture: `distribute` keeps every process group the
job uses (the world, the DMT groups, TorchRec's) alive until the process exits
(`keep_until_exit`), so no destructor joins a gloo thread under the GIL: the reducer and the
sharded modules may be freed at any time, the gloo threads sit idle until the operating
system ends the process. `shutdown(module)` is the documented end of a job: a barrier over
the world (every rank's outstanding collectives are done), the module's DDP reducer and
sharded tables released while the interpreter is whole, then `destroy_process_group`.
"""

from __future__ import annotations

import ctypes
import gc
from typing import Any

import torch.distributed as dist
import torch.nn as nn

from dmt_fx._compat import all_process_groups, module_children

__all__ = ["keep_until_exit", "live_groups", "shutdown"]

_KEPT: set[int] = set()  # ids of the groups given an extra reference (never freed, so never reused)


def live_groups() -> list[Any]:
    """This rank's process groups: the world and every group it is a member of."""
    if not dist.is_initialized():
        return []
    groups = all_process_groups()
    return groups or [dist.group.WORLD]


def keep_until_exit(groups: list[Any] | None = None) -> None:
    """Give each group (default: `live_groups()`) one reference that is never dropped, so its
    C++ destructor, which joins the gloo threads while holding the GIL, never runs in this
    process. A Python list would not do: interpreter teardown clears module globals."""
    for group in live_groups() if groups is None else groups:
        if id(group) not in _KEPT:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(group))
            _KEPT.add(id(group))


def shutdown(module: Any = None) -> None:
    """End this rank's part of a DMT job; call on every rank after the last step, instead of
    `torch.distributed.destroy_process_group()`.

    Waits for every rank (a world barrier: no collective is still in flight anywhere), keeps
    the process groups alive until the process exits, releases `module`'s DDP reducer and
    sharded tables while the interpreter is whole, and destroys the process groups.

    Args:
        module: the `DistributedDMT` that `distribute` returned (unusable afterwards), or
            None to end the process groups only.

    Returns:
        None. Safe to call twice, or when no process group is initialized.

    Raises:
        RuntimeError: from the barrier, when a peer rank died or stopped answering (after
            the job's collective timeout, never a hang).

    Example:
        >>> import torch.distributed as dist, dmt_fx
        >>> from dmt_fx.models.zoo import default_dlrm
        >>> dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
        >>> model, batch = default_dlrm()
        >>> module, optimizer = dmt_fx.distribute(dmt_fx.transform(model, "1x1"))
        >>> module(*batch).sum().backward(); optimizer.step()
        >>> dmt_fx.shutdown(module)
        >>> dist.is_initialized()
        False
    """
    if dist.is_initialized():
        dist.barrier()
        keep_until_exit()
    _release(module)
    gc.collect()  # DDP and TorchRec objects in reference cycles go now, not at interpreter exit
    if dist.is_initialized():
        dist.destroy_process_group()


def _release(module: Any) -> None:
    """Drop the module's DDP wrapper (its Reducer) and the lowered model (the sharded tables)."""
    if module is None:
        return
    for name in ("ddp", "joint"):
        children = module_children(module) if isinstance(module, nn.Module) else {}
        if name in children or name in getattr(module, "__dict__", {}):
            delattr(module, name)
