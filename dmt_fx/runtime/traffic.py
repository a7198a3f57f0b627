"""Exact traffic accounting of the collectives a training step really issues.

`TrafficMeter(topology, rank)` is a context manager. While it is active it wraps the
Python collective functions of `torch.distributed` that TorchRec and the dmt_fx runtime
call, and records, from THIS rank's point of view, the bytes it sends to every other
member of each collective's group. Each destination is classified as

* cross-host: `topology.host_of(destination) != topology.host_of(rank)`, or
* intra-host: same host,

and each byte as

* "id" bytes: integer (and bool) tensors: sparse ids, lengths, offsets, split sizes;
* "embedding" bytes: floating-point tensors: pooled embeddings and their gradients
  (per-sample weights of a weighted KJT are floating point too and count here).

A *message* is one destination of one collective call with a nonzero byte count.

What one call sends, per destination (n = group size):

=========================  ===========================================================
all_to_all_single          input_split_sizes[i] rows x bytes per row (equal splits of
                           dim 0 when the sizes are None); also the functional
                           (`torch.distributed._functional_collectives`) version that
                           TorchRec uses under sync collectives / torch.compile
all_to_all                 input_tensor_list[i]
all_gather,                its input, to every other member
all_gather_into_tensor
(funcol all_gather_tensor)
reduce_scatter             input_list[i]
reduce_scatter_tensor      the i-th of n equal chunks of dim 0
(funcol reduce_scatter_tensor)
all_reduce                 MODEL, not a count: a ring all-reduce sends 2*(n-1)/n of the
(funcol all_reduce)        tensor's bytes per rank; we spread that evenly over the n-1
                           other members (2*bytes/n each, n-1 messages). The real ring
                           sends to one neighbour only; bytes are right, the split is not.
broadcast                  the tensor to every other member when this rank is the source
                           (flat tree), nothing otherwise
=========================  ===========================================================

What the meter cannot see: collectives issued from C++. The important one is DDP's
gradient all-reduce (the Reducer buckets gradients and calls the process group from
C++), and DDP's initial parameter broadcast. `ddp_allreduce_bytes` estimates the former
(ring model); report it separately from the measured numbers, never add it silently.

Patching: the functions are replaced on `torch.distributed`, on
`torch.distributed.distributed_c10d` (so that c10d-internal callers, e.g.
`all_gather_object`, are seen too), on `torch.distributed._functional_collectives`, and
on every already imported module of torch.distributed, torchrec, fbgemm_gpu or dmt_fx
that bound one of them by name (`from torch.distributed import all_to_all_single`; none
in torchrec 1.8, checked, but a future version may). A re-entrancy guard makes a call
count once even if one patched function calls another. Everything is restored on exit.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import threading
from collections import defaultdict
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.topology import Topology

__all__ = [
    "C10D_FUNCTIONS", "FUNCOL_FUNCTIONS", "CollectiveRecord", "TrafficMeter",
    "ddp_allreduce_bytes", "ddp_param_bytes",
]

#: torch.distributed functions wrapped while a meter is active.
C10D_FUNCTIONS = (
    "all_to_all_single", "all_to_all", "all_gather", "all_gather_into_tensor",
    "reduce_scatter", "reduce_scatter_tensor", "all_reduce", "broadcast",
)
#: torch.distributed._functional_collectives functions wrapped while a meter is active.
FUNCOL_FUNCTIONS = ("all_to_all_single", "all_gather_tensor", "reduce_scatter_tensor", "all_reduce")

_SCANNED_PREFIXES = ("torch.distributed", "torchrec", "fbgemm_gpu", "dmt_fx")
_guard = threading.local()


@dataclasses.dataclass(frozen=True)
class CollectiveRecord:
    """One collective call as this rank saw it."""

    op: str  # e.g. "all_to_all_single", "funcol.all_to_all_single"
    step: int
    group: tuple[int, ...]  # global ranks, in group-rank order
    sent: tuple[tuple[int, str, float], ...]  # (destination global rank, "id"|"embedding", bytes)

    def per_destination(self) -> dict[int, float]:
        out: dict[int, float] = defaultdict(float)
        for dst, _, nbytes in self.sent:
            out[dst] += nbytes
        return dict(out)


def _kind(t: torch.Tensor) -> str:
    return "embedding" if (t.dtype.is_floating_point or t.dtype.is_complex) else "id"


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _group_ranks(group: Any) -> list[int] | None:
    """Global ranks of `group` in group-rank order; None if this rank is not a member."""
    if group is None:
        group = dist.group.WORLD
    if group is dist.GroupMember.NON_GROUP_MEMBER:
        return None
    return list(dist.get_process_group_ranks(group))


def _funcol_group_ranks(group: Any, tag: str = "") -> list[int]:
    from torch.distributed import _functional_collectives as funcol
    from torch.distributed.distributed_c10d import _resolve_process_group

    if isinstance(group, dist.ProcessGroup):
        return _group_ranks(group) or []
    return _group_ranks(_resolve_process_group(funcol._resolve_group_name(group, tag))) or []


# ---------------------------------------------------------------- what each op sends
# Each returns [(group rank of destination, kind, bytes)], including the rank itself
# (dropped later); `n` is the group size, `me` this rank's group rank.


def _a2a_single(tensor: torch.Tensor, splits: Sequence[int] | None, n: int) -> list:
    kind = _kind(tensor)
    if splits is None:
        return [(i, kind, _nbytes(tensor) / n) for i in range(n)]
    rows = tensor.size(0) if tensor.dim() else 1
    row_bytes = _nbytes(tensor) / rows if rows else 0
    return [(i, kind, int(s) * row_bytes) for i, s in enumerate(splits)]


def _to_all(tensor: torch.Tensor, n: int) -> list:
    return [(i, _kind(tensor), _nbytes(tensor)) for i in range(n)]


def _chunks(tensor: torch.Tensor, n: int) -> list:
    return [(i, _kind(tensor), _nbytes(tensor) / n) for i in range(n)]


def _ring(tensor: torch.Tensor, n: int) -> list:
    # Ring all-reduce: 2*(n-1)/n * bytes sent per rank, spread evenly over the n-1 others.
    return [(i, _kind(tensor), 2 * _nbytes(tensor) / n) for i in range(n)]


def _c10d_sent(op: str, a: Mapping[str, Any], n: int, me: int, ranks: list[int]) -> list:
    if op == "all_to_all_single":
        return _a2a_single(a["input"], a.get("input_split_sizes"), n)
    if op == "all_to_all":
        return [(i, _kind(t), _nbytes(t)) for i, t in enumerate(a["input_tensor_list"])]
    if op == "all_gather":
        return _to_all(a["tensor"], n)
    if op == "all_gather_into_tensor":
        return _to_all(a["input_tensor"], n)
    if op == "reduce_scatter":
        return [(i, _kind(t), _nbytes(t)) for i, t in enumerate(a["input_list"])]
    if op == "reduce_scatter_tensor":
        return _chunks(a["input"], n)
    if op == "all_reduce":
        return _ring(a["tensor"], n)
    if op == "broadcast":
        src, group_src = a.get("src"), a.get("group_src")
        source = group_src if group_src is not None else (ranks.index(src) if src in ranks else None)
        return _to_all(a["tensor"], n) if source == me else []
    raise AssertionError(op)


def _funcol_sent(op: str, a: Mapping[str, Any], n: int) -> list:
    if op == "all_to_all_single":
        return _a2a_single(a["self"], a.get("input_split_sizes"), n)
    if op == "all_gather_tensor":
        return _to_all(a["self"], n)
    if op == "reduce_scatter_tensor":
        return _chunks(a["self"], n)
    if op == "all_reduce":
        return _ring(a["self"], n)
    raise AssertionError(op)


# ---------------------------------------------------------------- the meter


class TrafficMeter:
    """Count the bytes and messages this rank sends in every collective, per step.

    Usage (on every rank)::

        with TrafficMeter(topology, dist.get_rank()) as meter:
            for batch in batches:
                loss = loss_fn(model(batch)); loss.backward(); optimizer.step()
                meter.step()
        print(meter.summary(skip=1))   # per-step means, warm-up step excluded

    Records made after the last `step()` belong to an open step that `summary` ignores.
    """

    _current: TrafficMeter | None = None  # the active meter of this process

    def __init__(self, topology: Topology, rank: int) -> None:
        if not 0 <= rank < topology.world_size:
            raise DMTError(f"rank {rank}", f"a rank of topology {topology} (0..{topology.world_size - 1})",
                           ["pass dist.get_rank()"])
        self.topology = topology
        self.rank = rank
        self.records: list[CollectiveRecord] = []
        self._step = 0
        self._patches: list[tuple[Any, str, Any]] = []
        self._active = False

    # -- lifecycle

    def __enter__(self) -> TrafficMeter:
        if TrafficMeter._current is not None:
            raise DMTError("a TrafficMeter entered while another is active",
                           "one active meter per process (both would see the same calls)",
                           ["leave the first meter's `with` block first"])
        from torch.distributed import _functional_collectives as funcol
        from torch.distributed import distributed_c10d as c10d

        replacements: dict[int, Any] = {}  # id(original) -> wrapper
        for name in C10D_FUNCTIONS:
            original = getattr(c10d, name)
            replacements[id(original)] = self._wrap(original, name, funcol=False)
        for name in FUNCOL_FUNCTIONS:
            original = getattr(funcol, name)
            replacements[id(original)] = self._wrap(original, name, funcol=True)
        modules = [dist, c10d, funcol] + [m for key, m in list(sys.modules.items())
                                          if m is not None and key.startswith(_SCANNED_PREFIXES)]
        seen: set[int] = set()
        names = set(C10D_FUNCTIONS) | set(FUNCOL_FUNCTIONS)
        for module in modules:
            if id(module) in seen:
                continue
            seen.add(id(module))
            namespace = getattr(module, "__dict__", {})
            for name in names:
                current = namespace.get(name)
                if current is not None and id(current) in replacements:
                    self._patches.append((module, name, current))
                    setattr(module, name, replacements[id(current)])
        self._active = True
        TrafficMeter._current = self
        return self

    def __exit__(self, *exc: Any) -> None:
        for module, name, original in reversed(self._patches):
            setattr(module, name, original)
        self._patches.clear()
        self._active = False
        TrafficMeter._current = None

    def _wrap(self, original: Callable, name: str, funcol: bool) -> Callable:
        signature = inspect.signature(original)
        label = f"funcol.{name}" if funcol else name

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not self._active or getattr(_guard, "busy", False):
                return original(*args, **kwargs)
            _guard.busy = True
            try:
                result = original(*args, **kwargs)  # a call that raises sent nothing
            finally:
                _guard.busy = False
            try:
                self._record(label, name, funcol, signature.bind(*args, **kwargs))
            except Exception as exc:  # a miscount must not pass silently
                raise DMTError(f"traffic accounting failed on {label}: {type(exc).__name__}: {exc}",
                               "a collective call the meter understands",
                               ["report this call; run without the meter meanwhile"]) from exc
            return result

        return wrapper

    def _record(self, label: str, name: str, funcol: bool, bound: inspect.BoundArguments) -> None:
        bound.apply_defaults()
        a = bound.arguments
        if funcol:
            ranks = _funcol_group_ranks(a["group"], a.get("tag", ""))
        else:
            ranks = _group_ranks(a.get("group"))
        if not ranks or self.rank not in ranks:
            return  # not a member: the call is a no-op on this rank
        n, me = len(ranks), ranks.index(self.rank)
        sent = _funcol_sent(name, a, n) if funcol else _c10d_sent(name, a, n, me, ranks)
        self.records.append(CollectiveRecord(
            op=label, step=self._step, group=tuple(ranks),
            sent=tuple((ranks[i], kind, float(nbytes)) for i, kind, nbytes in sent if i != me)))

    # -- steps and results

    def step(self) -> None:
        """Mark the end of a training step."""
        self._step += 1

    @property
    def steps(self) -> int:
        """Completed steps."""
        return self._step

    def _classify(self, record: CollectiveRecord) -> dict[str, float]:
        host = self.topology.host_of(self.rank)
        out = defaultdict(float)
        for dst, nbytes in record.per_destination().items():
            tier = "cross_host" if self.topology.host_of(dst) != host else "intra_host"
            if nbytes > 0:
                out[f"{tier}_messages"] += 1
        for dst, kind, nbytes in record.sent:
            tier = "cross_host" if self.topology.host_of(dst) != host else "intra_host"
            out[f"{tier}_bytes"] += nbytes
            out[f"{tier}_{kind}_bytes"] += nbytes
        return out

    def per_step(self) -> list[dict[str, Any]]:
        """Totals of every completed step, in order."""
        keys = ("cross_host_bytes", "cross_host_id_bytes", "cross_host_embedding_bytes", "cross_host_messages",
                "intra_host_bytes", "intra_host_id_bytes", "intra_host_embedding_bytes", "intra_host_messages")
        steps: list[dict[str, Any]] = []
        for _ in range(self._step):
            row: dict[str, Any] = {k: 0.0 for k in keys}
            row.update(collectives=0, cross_host_collectives=0, by_op={})
            steps.append(row)
        for record in self.records:
            if record.step >= self._step:
                continue  # open step
            row = steps[record.step]
            counts = self._classify(record)
            row["collectives"] += 1
            row["cross_host_collectives"] += int(counts["cross_host_messages"] > 0)
            for k in keys:
                row[k] += counts[k]
            op = row["by_op"].setdefault(record.op, {"calls": 0, **{k: 0.0 for k in keys}})
            op["calls"] += 1
            for k in keys:
                op[k] += counts[k]
        return steps

    def summary(self, skip: int = 0) -> dict[str, Any]:
        """Per-step means over the completed steps after the first `skip` (warm-up).

        Keys: cross_host_{,id_,embedding_}bytes, cross_host_messages,
        intra_host_{,id_,embedding_}bytes, intra_host_messages, collectives,
        cross_host_collectives (calls with at least one cross-host message), steps (how
        many were averaged), by_op {op: same keys + calls}. DDP's C++ all-reduce is not
        included (see `ddp_allreduce_bytes`)."""
        rows = self.per_step()[skip:]
        count = len(rows)
        out: dict[str, Any] = {"steps": count}
        numeric = [k for k in (rows[0] if rows else {}) if k != "by_op"]
        for k in numeric:
            out[k] = sum(r[k] for r in rows) / count
        by_op: dict[str, dict[str, float]] = {}
        for r in rows:
            for op, values in r["by_op"].items():
                acc = by_op.setdefault(op, defaultdict(float))
                for k, v in values.items():
                    acc[k] += v / count
        out["by_op"] = {op: dict(v) for op, v in sorted(by_op.items())}
        if not rows:
            for k in ("cross_host_bytes", "cross_host_id_bytes", "cross_host_embedding_bytes",
                      "cross_host_messages", "intra_host_bytes", "intra_host_id_bytes",
                      "intra_host_embedding_bytes", "intra_host_messages", "collectives",
                      "cross_host_collectives"):
                out[k] = 0.0
        return out


# ---------------------------------------------------------------- DDP (not measured)


def ddp_allreduce_bytes(num_dense_params_bytes: int | float, topology: Topology) -> float:
    """ESTIMATE of the bytes one rank sends per step in DDP's gradient all-reduce.

    DDP all-reduces gradients from C++ (the Reducer), which Python patching cannot see.
    This models it as one ring all-reduce over the whole world of N ranks:
    2 * (N - 1) / N * num_dense_params_bytes per rank per step (bucketing does not change
    the total). Report it separately from `TrafficMeter.summary()`: it is a model, not a
    measurement. In a ring ordered by rank, H of the N hops cross hosts."""
    n = topology.world_size
    return 2.0 * (n - 1) / n * float(num_dense_params_bytes)


def ddp_param_bytes(module: nn.Module) -> int:
    """Bytes of the gradients every DistributedDataParallel inside `module` all-reduces."""
    from torch.nn.parallel import DistributedDataParallel

    total = 0
    for sub in module.modules():
        if isinstance(sub, DistributedDataParallel):
            ignore = getattr(sub, "parameters_to_ignore", set())
            seen: set[int] = set()
            for name, p in sub.module.named_parameters():
                if p.requires_grad and name not in ignore and id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel() * p.element_size()
    return total
