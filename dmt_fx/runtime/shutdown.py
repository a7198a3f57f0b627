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

The same race has a second face once the groups are kept: a gloo worker marks its last
collective done, the main thread goes on to exit, and only then does the worker drop its
reference to the collective's tensors. When the tensor's Python object died first, that drop
frees the object and needs the GIL; if the interpreter is already finalizing, Python ends the
thread with `pthread_exit`, whose unwinding through a `noexcept` C++ frame calls
`std::terminate` ("terminate called without an active exception", SIGABRT, after a job that
trained correctly). `wait_for_idle_workers`, run at exit by an `atexit` hook that `distribute`
registers (and by `shutdown`), lets the workers finish while the interpreter is still whole.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import os
import time
from typing import Any

import torch.distributed as dist
import torch.nn as nn

from dmt_fx._compat import all_process_groups, module_children

__all__ = ["keep_until_exit", "live_groups", "shutdown", "wait_for_idle_workers"]

_KEPT: set[int] = set()  # ids of the groups given an extra reference (never freed, so never reused)
_GLOO_WORKER = "pt_gloo_runloop"  # the name ProcessGroupGloo gives its worker threads


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
            if not _KEPT:
                atexit.register(wait_for_idle_workers)
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(group))
            _KEPT.add(id(group))


def wait_for_idle_workers(timeout_s: float = 5.0, interval_s: float = 0.02) -> bool:
    """Wait until every gloo worker thread of this process is idle, with the GIL released.

    Idle: asleep (state S) in two samples `interval_s` apart with no context switch between
    them. The main thread sleeps between the samples, so the GIL is free: a worker waiting for
    it would have been woken and switched. Linux only (reads /proc); elsewhere returns at once.

    Returns:
        True when the workers are idle (or there are none), False after `timeout_s`.
    """
    deadline, previous = time.monotonic() + timeout_s, None
    while True:
        time.sleep(interval_s)
        states = _worker_states()
        if states is None or (states == previous and all(state == "S" for state, _ in states.values())):
            return True
        if time.monotonic() > deadline:
            return False
        previous = states


def _worker_states() -> dict[int, tuple[str, str]] | None:
    """{thread id: (state, context switches)} of the gloo workers; None without /proc."""
    tasks, states = "/proc/self/task", {}
    if not os.path.isdir(tasks):
        return None
    for tid in os.listdir(tasks):
        try:
            with open(f"{tasks}/{tid}/comm") as handle:
                if handle.read().strip() != _GLOO_WORKER:
                    continue
            with open(f"{tasks}/{tid}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:  # the thread ended meanwhile
            continue
        switches = fields.get("voluntary_ctxt_switches", "").strip() + "/" + \
            fields.get("nonvoluntary_ctxt_switches", "").strip()
        states[int(tid)] = (fields.get("State", "?").strip()[:1], switches)
    return states


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
        wait_for_idle_workers()
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
