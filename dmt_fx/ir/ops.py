"""Functions the rewritten graph calls: the DMT vocabulary of the logical model.

In one process the collectives are the identity: every sample keeps exactly the values it
had, which is what makes the logical model equal to the original. `dmt_fx.distribute`
lowers the same nodes to real peer all-to-alls; the graph carries group *names* only.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from dmt_fx.ir.names import GroupKind


def peer_input_exchange(values: tuple, *, tower: int, host: int, group: str = GroupKind.PEER) -> tuple:
    """SPTT step 2: send tower `tower`'s ids for the local batch to its host's peer.

    Identity in one process."""
    return tuple(values)


def peer_output_exchange(values: tuple, *, tower: int, host: int, group: str = GroupKind.PEER) -> tuple:
    """SPTT step 5: return each peer its own rows of the tower's output. Identity in one process."""
    return tuple(values)


def select_features(kjt: KeyedJaggedTensor, keys: Sequence[str]) -> KeyedJaggedTensor:
    """SPTT step 1: the features of one tower, in tower order (ids, lengths, weights)."""
    if list(kjt.keys()) == list(keys):
        return kjt
    index = {k: i for i, k in enumerate(kjt.keys())}
    indices = [index[k] for k in keys]
    if kjt.variable_stride_per_key():
        return kjt.permute(indices)
    return _select_by_slices(kjt, indices)


def _select_by_slices(kjt: KeyedJaggedTensor, indices: list[int]) -> KeyedJaggedTensor:
    """What kjt.permute(indices) returns, built from one slice per key and a concatenation:
    a tower takes a few keys, and for those this is several times cheaper on CPU than the
    general permute kernel (which also handles repeated and variable-batch keys).

    The result carries the source's per-key JaggedTensors (`jt_dict`): a TorchRec collection
    reads its features through `to_dict()`, which the source computes once (and caches) for
    all towers, as the original collection did once, instead of once per tower. Same
    tensors as the original lookup reads: bit for bit."""
    stride = kjt.stride()
    length_per_key, offset_per_key = kjt.length_per_key(), kjt.offset_per_key()
    values_at = [(offset_per_key[i], offset_per_key[i + 1]) for i in indices]
    lengths_at = [(i * stride, (i + 1) * stride) for i in indices]
    weights = kjt.weights_or_none()
    keys = [kjt.keys()[i] for i in indices]
    per_key = kjt.to_dict()
    return KeyedJaggedTensor(
        keys=keys,
        values=_gather(kjt.values(), values_at),
        weights=None if weights is None else _gather(weights, values_at),
        lengths=_gather(kjt.lengths(), lengths_at),
        stride=stride,
        length_per_key=[length_per_key[i] for i in indices],
        jt_dict={k: per_key[k] for k in keys},
    )


def _gather(tensor: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """The spans of `tensor`, adjacent ones joined; one span is a view, not a copy."""
    joined: list[tuple[int, int]] = []
    for start, end in spans:
        if joined and joined[-1][1] == start:
            joined[-1] = (joined[-1][0], end)
        else:
            joined.append((start, end))
    if len(joined) == 1:
        return tensor[joined[0][0]:joined[0][1]]
    return torch.cat([tensor[start:end] for start, end in joined])


def merge_keyed_tensors(parts: Sequence[KeyedTensor], keys: Sequence[str]) -> KeyedTensor:
    """SPTT step 6: rebuild the collection's KeyedTensor in its original key order.

    Slices and a concatenation only, so values and gradients are bit-for-bit the original's.
    Keys that stay adjacent move as one block: each part is split once, at the blocks' edges."""
    if len(parts) == 1 and list(parts[0].keys()) == list(keys):
        return parts[0]
    where: dict[str, tuple[int, int, int]] = {}  # key -> (part, first column, width)
    for p, part in enumerate(parts):
        start = 0
        for key, width in zip(part.keys(), part.length_per_key()):
            where[key], start = (p, start, width), start + width
    blocks: list[list[int]] = []  # [part, first column, end column], in the output order
    for key in keys:
        p, start, width = where[key]
        if blocks and blocks[-1][0] == p and blocks[-1][2] == start:
            blocks[-1][2] = start + width
        else:
            blocks.append([p, start, start + width])
    pieces = _blocks(parts, blocks)
    return KeyedTensor(keys=list(keys), length_per_key=[where[k][2] for k in keys],
                       values=torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0])


def _blocks(parts: Sequence[KeyedTensor], blocks: list[list[int]]) -> list[torch.Tensor]:
    """The column blocks, each part split once (one backward for all its blocks)."""
    by_part: dict[int, dict[int, torch.Tensor]] = {}
    for p, part in enumerate(parts):
        edges = sorted({0, part.values().shape[1]} | {e for b in blocks if b[0] == p for e in b[1:]})
        sizes = [b - a for a, b in zip(edges, edges[1:])]
        by_part[p] = dict(zip(edges, part.values().split(sizes, dim=1)))
    return [by_part[p][start] for p, start, _ in blocks]
