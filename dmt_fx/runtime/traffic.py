"""Exact traffic accounting of the collectives a training step really issues.

`TrafficMeter(topology, rank)` is a context manager around a `TorchDispatchMode` (the
mechanism of torch's own `CommDebugMode`): while it is active, every c10d op that reaches
the dispatcher on this rank is seen, whoever issued it: the Python API, TorchRec's
`KJTAllToAll` / `PooledEmbeddingsAllToAll` forward and backward, and DDP's C++ Reducer.
Nothing in torch or torchrec is rebound. What each op sends is read from its arguments
(`dmt_fx.runtime.collectives`); from THIS rank's point of view every destination is

* cross-host: `topology.host_of(destination) != topology.host_of(rank)`, or
* intra-host: same host,

and every byte is an "id" byte (integer tensors: ids, lengths, split sizes) or an
"embedding" byte (floating point: pooled embeddings, their gradients, per-sample weights).
A *message* is one destination of one call with a nonzero byte count. Each call also gets
the kind of its group (`group_kind`): the cross-host peer group, an intra-host group, or a
group that mixes both (the world).

Three families are kept apart. The *exchanges* (all-to-alls, gathers, scatters) fill the
fields `cross_host_*`, `intra_host_*`, `collectives`, as the formulas of DMT.md count
them. The *all-reduces* are data-parallel gradient synchronisation (DDP's buckets, over
the world or, for tower modules, the host): they fill `dense_allreduce_*`, MEASURED calls
and tensor bytes with the ring model's bytes per rank (2 (n-1)/n of the payload) and ring
steps (2 (n-1) sends per call); DDP's first steps add a few bookkeeping all-reduces (the
used-parameter map) that warm-up skips. The *broadcasts* fill `broadcast_*`: in training
they are DDP's one-off bucket-order sync in its second or third step, from rank 0.
The *control* collectives are the runtime's agreement on each batch (`rank_status.py`: one
small all-gather per forward on the status group): they fill `control_*` only.

Threads: the mode lives in torch's thread-local state, which the autograd engine copies
into the threads that run a backward pass (`at::ThreadLocalState`), so collectives issued
by backward functions and autograd hooks are seen (tests/test_traffic.py checks this on an
engine pool thread). A collective issued from a thread the user started is not seen.
Not seen either: a custom op that wraps a collective in its kernel, unless it is in the
vocabulary (TorchRec's two are), because the mode pauses itself while an op runs.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any, Sequence

import torch
import torch.nn as nn

from dmt_fx._compat import TorchDispatchMode, in_backward
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.names import GroupKind
from dmt_fx.ir.topology import Topology
from dmt_fx.runtime.collectives import OPS, Collective, group_ranks

__all__ = ["MIXED_GROUP", "CollectiveRecord", "TrafficMeter", "ddp_allreduce_bytes", "ddp_param_bytes",
           "group_kind"]

MIXED_GROUP = "mixed"  # a group with several hosts and several ranks of one host (the world)
TIERS = ("cross_host", "intra_host")
EXCHANGE_KEYS = ("cross_host_bytes", "cross_host_id_bytes", "cross_host_embedding_bytes", "cross_host_messages",
                 "intra_host_bytes", "intra_host_id_bytes", "intra_host_embedding_bytes", "intra_host_messages")
COUNT_KEYS = ("collectives", "cross_host_collectives", "intra_host_collectives")
DENSE_KEYS = ("dense_allreduce_bytes", "dense_allreduce_payload_bytes", "dense_allreduce_messages",
              "dense_allreduce_collectives")
BROADCAST_KEYS = ("broadcast_bytes", "broadcast_messages", "broadcast_collectives")
CONTROL_KEYS = ("control_bytes", "control_collectives")
ALL_KEYS = EXCHANGE_KEYS + COUNT_KEYS + DENSE_KEYS + BROADCAST_KEYS + CONTROL_KEYS
STATUS_GROUP_DESC = "dmt_rank_status"  # rank_status.py's group: its collectives are control traffic


@dataclasses.dataclass(frozen=True)
class CollectiveRecord:
    """One collective call as this rank saw it."""

    op: str  # the Python API name, e.g. "all_to_all_single", "funcol.all_to_all_single"
    step: int
    group: tuple[int, ...]  # global ranks, in group-rank order
    sent: tuple[tuple[int, str, float], ...]  # (destination global rank, "id"|"embedding", bytes)
    family: str = "exchange"  # or "all_reduce", "broadcast", "control"
    group_kind: str = MIXED_GROUP  # GroupKind.PEER, GroupKind.INTRA_HOST or MIXED_GROUP
    payload_bytes: float = 0.0  # bytes of the tensors handed to the call (all-reduce: reduced)
    phase: str = "forward"  # "backward" when issued while autograd runs a backward pass

    def per_destination(self) -> dict[int, float]:
        out: dict[int, float] = defaultdict(float)
        for dst, _, nbytes in self.sent:
            out[dst] += nbytes
        return dict(out)


def group_kind(ranks: Sequence[int], topology: Topology) -> str:
    """GroupKind.INTRA_HOST for ranks of one host, GroupKind.PEER for one rank per host with
    the same local rank, MIXED_GROUP otherwise."""
    hosts = {topology.host_of(r) for r in ranks}
    if len(hosts) == 1:
        return GroupKind.INTRA_HOST
    locals_ = {r % topology.local_world_size for r in ranks}
    return GroupKind.PEER if len(hosts) == len(ranks) and len(locals_) == 1 else MIXED_GROUP


class _CollectiveMode(TorchDispatchMode):
    """Passes every op through; reports the c10d ones to the meter after they ran."""

    def __init__(self, meter: TrafficMeter) -> None:
        super().__init__()
        self._meter = meter

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))  # a call that raises sent nothing
        collective = OPS.get(func)
        if collective is not None:
            self._meter.observe(collective, args)
        return out


class TrafficMeter:
    """Count the bytes and messages this rank sends in every collective, per step.

    Usage (on every rank)::

        meter = TrafficMeter(topology, dist.get_rank())
        for batch in batches:
            with meter:
                loss = loss_fn(model(batch)); loss.backward(); optimizer.step()
            meter.step()
        print(meter.summary(skip=1))   # per-step means, warm-up step excluded

    Records made after the last `step()` belong to an open step that `summary` ignores.
    """

    _active: TrafficMeter | None = None  # one meter per process: two would see the same calls

    def __init__(self, topology: Topology, rank: int) -> None:
        if not 0 <= rank < topology.world_size:
            raise DMTError(f"rank {rank}", f"a rank of topology {topology} (0..{topology.world_size - 1})",
                           ["pass dist.get_rank()"])
        self.topology = topology
        self.rank = rank
        self.records: list[CollectiveRecord] = []
        self._step = 0
        self._mode: _CollectiveMode | None = None

    # -- lifecycle

    def __enter__(self) -> TrafficMeter:
        if TrafficMeter._active is not None:
            raise DMTError("a TrafficMeter entered while another is active",
                           "one active meter per process (both would see the same calls)",
                           ["leave the first meter's `with` block first"])
        self._mode = _CollectiveMode(self)
        self._mode.__enter__()
        TrafficMeter._active = self
        return self

    def __exit__(self, *exc: Any) -> None:
        mode, self._mode = self._mode, None
        TrafficMeter._active = None
        if mode is not None:
            mode.__exit__(*exc)

    # -- what the mode reports

    def observe(self, collective: Collective, args: Sequence[Any]) -> None:
        """Record one call of `collective` with the op's positional `args`."""
        try:
            self._record(collective, args)
        except Exception as exc:  # a miscount must not pass silently
            raise DMTError(f"traffic accounting failed on {collective.name}: {type(exc).__name__}: {exc}",
                           "a collective call the meter understands",
                           ["report this call; run without the meter meanwhile"]) from exc

    def _record(self, collective: Collective, args: Sequence[Any]) -> None:
        ranks = group_ranks(args[collective.group_arg])
        if self.rank not in ranks:
            return  # not a member: the call is a no-op on this rank
        me = ranks.index(self.rank)
        sent = collective.sent(args, len(ranks), me)
        payload = sum(t.numel() * t.element_size() for t in _tensors(args[0])) if collective.family == "all_reduce" \
            else sum(nbytes for _, _, nbytes in sent)
        family, op = collective.family, collective.name
        if _group_desc(args[collective.group_arg]) == STATUS_GROUP_DESC:  # listed apart from the data's ops
            family, op = "control", f"{collective.name}(status)"
        self.records.append(CollectiveRecord(
            op=op, step=self._step, group=tuple(ranks), family=family,
            group_kind=group_kind(ranks, self.topology), phase=_phase(),
            payload_bytes=float(payload),
            sent=tuple((ranks[i], k, float(nbytes)) for i, k, nbytes in sent if i != me)))

    # -- steps and results

    def step(self) -> None:
        """Mark the end of a training step."""
        self._step += 1

    @property
    def steps(self) -> int:
        """Completed steps."""
        return self._step

    def per_step(self) -> list[dict[str, Any]]:
        """Totals of every completed step, in order."""
        steps = [_empty_row() for _ in range(self._step)]
        for record in self.records:
            if record.step < self._step:  # later records belong to the open step
                _add(steps[record.step], record, self.topology, self.rank)
        return steps

    def summary(self, skip: int = 0) -> dict[str, Any]:
        """Per-step means over the completed steps after the first `skip` (warm-up).

        Keys: cross_host_{,id_,embedding_}bytes, cross_host_messages,
        intra_host_{,id_,embedding_}bytes, intra_host_messages, collectives,
        cross_host_collectives, intra_host_collectives (exchanges only); the measured dense
        all-reduce: dense_allreduce_bytes (ring model: bytes this rank sends),
        dense_allreduce_payload_bytes (the gradient bytes reduced), dense_allreduce_messages
        (ring steps), dense_allreduce_collectives; broadcast_{bytes,messages,collectives}
        (sent as the root); control_{bytes,collectives} (the runtime's per-batch agreement);
        steps (how many were averaged);
        by_op {op: same keys + calls}; by_group {group kind: same keys + calls}."""
        rows = self.per_step()[skip:]
        count = max(len(rows), 1)
        out: dict[str, Any] = {"steps": len(rows)}
        for key in ALL_KEYS:
            out[key] = sum(r[key] for r in rows) / count
        for table in ("by_op", "by_group"):
            merged: dict[str, dict[str, float]] = {}
            for r in rows:
                for name, values in r[table].items():
                    acc = merged.setdefault(name, defaultdict(float))
                    for k, v in values.items():
                        acc[k] += v / count
            out[table] = {name: dict(v) for name, v in sorted(merged.items())}
        return out


# ---------------------------------------------------------------- per-step rows


def _group_desc(group: Any) -> str:
    if isinstance(group, torch.ScriptObject):
        group = torch.distributed.ProcessGroup.unbox(group)
    return str(getattr(group, "group_desc", ""))


def _phase() -> str:
    # the autograd engine sets a graph task id on the threads that run a backward pass
    return "backward" if in_backward() else "forward"


def _tensors(x: Any) -> list[torch.Tensor]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _empty_row() -> dict[str, Any]:
    row: dict[str, Any] = {k: 0.0 for k in ALL_KEYS}
    row.update({k: 0 for k in COUNT_KEYS}, by_op={}, by_group={})
    return row


def _classify(record: CollectiveRecord, topology: Topology, rank: int) -> dict[str, float]:
    """The exchange fields of one call, from this rank's point of view."""
    host = topology.host_of(rank)
    out: dict[str, float] = defaultdict(float)
    for dst, nbytes in record.per_destination().items():
        if nbytes > 0:
            out[f"{_tier(topology, host, dst)}_messages"] += 1
    for dst, kind, nbytes in record.sent:
        tier = _tier(topology, host, dst)
        out[f"{tier}_bytes"] += nbytes
        out[f"{tier}_{kind}_bytes"] += nbytes
    return out


def _tier(topology: Topology, host: int, dst: int) -> str:
    return "cross_host" if topology.host_of(dst) != host else "intra_host"


def _values(record: CollectiveRecord, topology: Topology, rank: int) -> dict[str, float]:
    """The per-step fields one call adds to, by family."""
    if record.family == "exchange":
        counts = _classify(record, topology, rank)
        values = {k: counts[k] for k in EXCHANGE_KEYS}
        values.update(collectives=1, cross_host_collectives=int(counts["cross_host_messages"] > 0),
                      intra_host_collectives=int(counts["intra_host_messages"] > 0))
        return values
    if record.family == "control":
        return {"control_bytes": sum(b for _, _, b in record.sent), "control_collectives": 1}
    if record.family == "all_reduce":
        return {"dense_allreduce_bytes": sum(b for _, _, b in record.sent),
                "dense_allreduce_payload_bytes": record.payload_bytes,
                "dense_allreduce_messages": 2 * (len(record.group) - 1), "dense_allreduce_collectives": 1}
    return {"broadcast_bytes": sum(b for _, _, b in record.sent),
            "broadcast_messages": sum(1 for b in record.per_destination().values() if b > 0),
            "broadcast_collectives": 1}


def _add(row: dict[str, Any], record: CollectiveRecord, topology: Topology, rank: int) -> None:
    values = _values(record, topology, rank)
    for key, value in values.items():
        row[key] += value
    for table, name in (("by_op", record.op), ("by_group", record.group_kind)):
        acc = row[table].setdefault(name, defaultdict(float))
        acc["calls"] += 1
        for key, value in values.items():
            acc[key] += value


# ---------------------------------------------------------------- DDP


def ddp_allreduce_bytes(num_dense_params_bytes: int | float, topology: Topology) -> float:
    """ESTIMATE of the bytes one rank sends per step in DDP's gradient all-reduce: one ring
    all-reduce over the whole world of N ranks, 2 (N - 1) / N * num_dense_params_bytes
    (bucketing does not change the total). The meter measures it (`dense_allreduce_bytes`);
    this estimate stays for records and readers that compare the two."""
    n = topology.world_size
    return 2.0 * (n - 1) / n * float(num_dense_params_bytes)


def ddp_param_bytes(module: nn.Module) -> int:
    """Bytes of the gradients every DistributedDataParallel inside `module` all-reduces."""
    total = 0
    for sub in module.modules():
        if isinstance(sub, nn.parallel.DistributedDataParallel):
            ignore = getattr(sub, "parameters_to_ignore", set())
            seen: set[int] = set()
            for name, p in sub.module.named_parameters():
                if p.requires_grad and name not in ignore and id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel() * p.element_size()
    return total
