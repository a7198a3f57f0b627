"""What one c10d collective sends, read from the arguments of the dispatcher op.

Every collective of `torch.distributed` reaches the dispatcher as an op of the `c10d`
namespace (the Python API, DDP's C++ Reducer and TorchRec's autograd functions alike:
`ProcessGroup`'s C++ methods call these ops) or of the functional namespace
(`_c10d_functional`, which TorchRec uses under sync collectives and torch.compile).
`OPS` maps each such op to a `Collective`: the name it has in the Python API (the labels of
the traffic JSON), its family, and a parser from the op's positional arguments to what
THIS rank sends. The schemas are in `torch.ops.c10d.<op>.default._schema`.

What one call sends, per destination (n = group size, sizes in bytes):

=====================================  ===================================================
all_to_all_single (alltoall_base_)     input_split_sizes[i] rows; equal splits of dim 0
                                       when the sizes are empty
all_to_all (alltoall_)                 input_tensors[i]
all_gather, all_gather_into_tensor     every input, to every other member
reduce_scatter                         input_tensors[0][i]
reduce_scatter_tensor                  the i-th of n equal chunks of dim 0
broadcast, scatter                     from the root only: its tensor(s) to every member
reduce, gather, send                   to the root (or `dst`) only
all_reduce                             MODEL, not a count: a ring sends 2 (n-1)/n of the
                                       tensor bytes per rank, spread here evenly over the
                                       n-1 others (2 bytes/n each)
=====================================  ===================================================

Families: all-reduces ("all_reduce": data-parallel gradient synchronisation) and
broadcasts ("broadcast": DDP's bucket-order and buffer syncs, weight initialisation) are
kept apart from the "exchange" family, the sparse exchanges that DMT.md counts.

Receives and barriers send no payload and are not listed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torchrec.distributed.comm_ops  # noqa: F401 (registers the torchrec:: collective ops)

from dmt_fx._compat import functional_collective_namespaces, resolve_process_group

__all__ = ["OPS", "Collective", "Sent", "group_ranks", "payload_kind"]

#: (group rank of the destination, "id" | "embedding", bytes); the rank itself included
Sent = tuple[int, str, float]
Parser = Callable[[Sequence[Any], int, int], list[Sent]]


@dataclasses.dataclass(frozen=True)
class Collective:
    """One dispatcher op: its Python API name, family, group argument and parser."""

    name: str  # e.g. "all_to_all_single", "funcol.all_to_all_single"
    family: str  # "exchange", "all_reduce" or "broadcast"
    group_arg: int  # position of the ProcessGroup (or functional group name) argument
    sent: Parser  # (args, group size n, my group rank) -> what this rank sends


def payload_kind(t: torch.Tensor) -> str:
    """Integers and bools are ids (ids, lengths, offsets, splits); floats are embeddings
    (pooled embeddings, their gradients, per-sample weights)."""
    return "embedding" if (t.dtype.is_floating_point or t.dtype.is_complex) else "id"


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def group_ranks(group: Any) -> list[int]:
    """Global ranks, in group-rank order, of a c10d op's group argument: a boxed
    ProcessGroup (`torch.ScriptObject`), a ProcessGroup, or a functional group name."""
    if isinstance(group, torch.ScriptObject):
        group = dist.ProcessGroup.unbox(group)
    elif isinstance(group, str):  # funcol passes the group's registered name
        group = resolve_process_group(group)
    return list(dist.get_process_group_ranks(group))


# ---------------------------------------------------------------- payload shapes


def _split_rows(t: torch.Tensor, splits: Sequence[int], n: int) -> list[Sent]:
    kind = payload_kind(t)
    if not splits:  # equal splits of dim 0
        return [(i, kind, _nbytes(t) / n) for i in range(n)]
    rows = t.size(0) if t.dim() else 1
    row_bytes = _nbytes(t) / rows if rows else 0.0
    return [(i, kind, int(s) * row_bytes) for i, s in enumerate(splits)]


def _each_to(tensors: Sequence[torch.Tensor]) -> list[Sent]:
    return [(i, payload_kind(t), _nbytes(t)) for i, t in enumerate(tensors)]


def _to_all(tensors: Sequence[torch.Tensor], n: int) -> list[Sent]:
    return [(i, payload_kind(t), _nbytes(t)) for t in tensors for i in range(n)]


def _chunks(tensors: Sequence[torch.Tensor], n: int) -> list[Sent]:
    return [(i, payload_kind(t), _nbytes(t) / n) for t in tensors for i in range(n)]


def _ring(tensors: Sequence[torch.Tensor], n: int) -> list[Sent]:
    return [(i, payload_kind(t), 2 * _nbytes(t) / n) for t in tensors for i in range(n)]


def _from_root(root: int, me: int, sent: list[Sent]) -> list[Sent]:
    return sent if root == me else []


def _to_root(root: int, me: int, tensors: Sequence[torch.Tensor]) -> list[Sent]:
    return [] if root == me else [(root, payload_kind(t), _nbytes(t)) for t in tensors]


# ---------------------------------------------------------------- the vocabulary
# Parsers take the op's positional arguments (the dispatcher passes them positionally, as
# in the schemas), the group size n and this rank's group rank `me`.


def _list(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _a2a(a: Sequence[Any], n: int, me: int) -> list[Sent]:  # (output, input, group, out_splits, in_splits)
    return _split_rows(a[1], a[4], n)


def _funcol_a2a(a: Sequence[Any], n: int, me: int) -> list[Sent]:  # (input, out_splits, in_splits, group)
    return _split_rows(a[0], a[2], n)


def _gather_in1(a: Sequence[Any], n: int, me: int) -> list[Sent]:  # c10d: inputs are argument 1
    return _to_all(_list(a[1]), n)


def _gather_in0(a: Sequence[Any], n: int, me: int) -> list[Sent]:  # funcol: the input is argument 0
    return _to_all(_list(a[0]), n)


def _chunks_in1(a: Sequence[Any], n: int, me: int) -> list[Sent]:
    return _chunks(_list(a[1]), n)


def _chunks_in0(a: Sequence[Any], n: int, me: int) -> list[Sent]:
    return _chunks(_list(a[0]), n)


def _ring_in0(a: Sequence[Any], n: int, me: int) -> list[Sent]:
    return _ring(_list(a[0]), n)


def _alltoall(a: Sequence[Any], n: int, me: int) -> list[Sent]:  # (outputs, inputs, group)
    return _each_to(a[1])


def _reduce_scatter(a: Sequence[Any], n: int, me: int) -> list[Sent]:  # (outputs, inputs[][], group, op)
    return _each_to(a[1][0])


def _broadcast(a: Sequence[Any], n: int, me: int) -> list[Sent]:  # (tensors, group, root, root_tensor)
    return _from_root(a[2], me, _to_all(a[0], n))


def _funcol_broadcast(a: Sequence[Any], n: int, me: int) -> list[Sent]:  # (input, src, group)
    return _from_root(a[1], me, _to_all([a[0]], n))


def _scatter(a: Sequence[Any], n: int, me: int) -> list[Sent]:  # (outputs, inputs[][], group, root)
    return _from_root(a[3], me, _each_to(a[1][0]) if a[1] else [])


def _reduce(a: Sequence[Any], n: int, me: int) -> list[Sent]:  # (tensors, group, op, root, root_tensor)
    return _to_root(a[3], me, a[0])


def _gather(a: Sequence[Any], n: int, me: int) -> list[Sent]:  # (outputs[][], inputs, group, root)
    return _to_root(a[3], me, a[1])


def _send(a: Sequence[Any], n: int, me: int) -> list[Sent]:  # (tensors, group, dst, tag)
    return _to_root(a[2], -1, a[0])


def _isend(a: Sequence[Any], n: int, me: int) -> list[Sent]:  # (tensor, dst, tag, group)
    return _to_root(a[1], -1, [a[0]])


EX, AR, BC = "exchange", "all_reduce", "broadcast"  # the families
#: op name in torch.ops.c10d -> (Python API name, family, group position, parser)
C10D_OPS = {
    "alltoall_base_": ("all_to_all_single", EX, 2, _a2a),
    "alltoall_": ("all_to_all", EX, 2, _alltoall),
    "allgather_": ("all_gather", EX, 2, _gather_in1),
    "_allgather_base_": ("all_gather_into_tensor", EX, 2, _gather_in1),
    "allgather_coalesced_": ("all_gather_coalesced", EX, 2, _gather_in1),
    "allgather_into_tensor_coalesced_": ("all_gather_into_tensor_coalesced", EX, 2, _gather_in1),
    "reduce_scatter_": ("reduce_scatter", EX, 2, _reduce_scatter),
    "_reduce_scatter_base_": ("reduce_scatter_tensor", EX, 2, _chunks_in1),
    "reduce_scatter_tensor_coalesced_": ("reduce_scatter_tensor_coalesced", EX, 2, _chunks_in1),
    "broadcast_": ("broadcast", BC, 1, _broadcast),
    "scatter_": ("scatter", EX, 2, _scatter),
    "reduce_": ("reduce", EX, 1, _reduce),
    "gather_": ("gather", EX, 2, _gather),
    "send": ("send", EX, 1, _send),
    "allreduce_": ("all_reduce", AR, 1, _ring_in0),
    "allreduce_coalesced_": ("all_reduce_coalesced", AR, 1, _ring_in0),
}
#: op name in torch.ops._c10d_functional (and _c10d_functional_autograd) -> the same
FUNCOL_OPS = {
    "all_to_all_single": ("funcol.all_to_all_single", EX, 3, _funcol_a2a),
    "all_gather_into_tensor": ("funcol.all_gather_tensor", EX, 2, _gather_in0),
    "all_gather_into_tensor_out": ("funcol.all_gather_tensor", EX, 2, _gather_in0),
    "all_gather_into_tensor_coalesced": ("funcol.all_gather_tensor_coalesced", EX, 2, _gather_in0),
    "reduce_scatter_tensor": ("funcol.reduce_scatter_tensor", EX, 3, _chunks_in0),
    "reduce_scatter_tensor_out": ("funcol.reduce_scatter_tensor", EX, 3, _chunks_in0),
    "reduce_scatter_tensor_coalesced": ("funcol.reduce_scatter_tensor_coalesced", EX, 3, _chunks_in0),
    "broadcast": ("funcol.broadcast", BC, 2, _funcol_broadcast),
    "broadcast_": ("funcol.broadcast", BC, 2, _funcol_broadcast),
    "isend": ("funcol.isend", EX, 3, _isend),
    "all_reduce": ("funcol.all_reduce", AR, 2, _ring_in0),
    "all_reduce_": ("funcol.all_reduce", AR, 2, _ring_in0),
    "all_reduce_coalesced": ("funcol.all_reduce_coalesced", AR, 2, _ring_in0),
    "all_reduce_coalesced_": ("funcol.all_reduce_coalesced", AR, 2, _ring_in0),
}
#: TorchRec's custom ops around funcol (`torchrec_use_sync_collectives`): their kernels call
#: funcol while the mode is paused inside its handler, so the mode must know them by name.
TORCHREC_OPS = {
    "reduce_scatter_tensor": ("torchrec.reduce_scatter_tensor", EX, 3, _chunks_in0),
    "all_gather_into_tensor": ("torchrec.all_gather_into_tensor", EX, 3, _gather_in0),
}


def _vocabulary() -> dict[Any, Collective]:
    funcol, funcol_autograd = functional_collective_namespaces()
    tables = ((torch.ops.c10d, C10D_OPS), (funcol, FUNCOL_OPS), (funcol_autograd, FUNCOL_OPS),
              (torch.ops.torchrec, TORCHREC_OPS))
    found: dict[Any, Collective] = {}
    for namespace, table in tables:
        for op, spec in table.items():
            packet = getattr(namespace, op, None)  # absent in this build of torch: nothing to see
            if packet is not None:
                found[packet.default] = Collective(*spec)
    return found


#: dispatcher op (OpOverload) -> Collective
OPS: dict[Any, Collective] = _vocabulary()
