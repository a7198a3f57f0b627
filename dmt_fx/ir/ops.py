"""Functions the rewritten graph calls: the DMT vocabulary of the logical model.

In one process the collectives are the identity: every sample keeps exactly the values it
had, which is what makes the logical model equal to the original. `dmt_fx.distribute`
lowers the same nodes to real peer all-to-alls; the graph carries group *names* only.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from dmt_fx._compat import (
    ebc_embedding_names,
    ebc_feature_names,
    ebc_lengths_per_embedding,
    merged_keyed_tensor,
    pooled_keyed_tensor,
    tower_features,
)
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
    indices = _positions(tuple(kjt.keys()), tuple(keys))
    if indices is None:
        return kjt
    if kjt.variable_stride_per_key():
        return kjt.permute(list(indices))
    return tower_features(kjt, indices, keys)  # kjt.permute's result, gathered only if read


@functools.lru_cache(maxsize=256)
def _positions(given: tuple[str, ...], keys: tuple[str, ...]) -> tuple[int, ...] | None:
    """Where the tower's keys sit among the KJT's (None: the same keys in the same order);
    the same for every step of a model, worked out once."""
    if given == keys:
        return None
    index = {k: i for i, k in enumerate(given)}
    return tuple(index[k] for k in keys)


def merge_keyed_tensors(parts: Sequence[KeyedTensor], keys: Sequence[str]) -> KeyedTensor:
    """SPTT step 6: rebuild the collection's KeyedTensor in its original key order.

    Slices and a concatenation only, so values and gradients are bit-for-bit the original's.
    Keys that stay adjacent move as one block: each part is split once, at the blocks' edges.
    The concatenation happens when the values are first read: a model that reads the
    collection's output per key (`to_dict()`, what TorchRec's DLRM does) gets the parts'
    own per-key columns and no concatenation at all."""
    if len(parts) == 1 and list(parts[0].keys()) == list(keys):
        return parts[0]
    layout = _layout(tuple(tuple(p.keys()) for p in parts), tuple(tuple(p.length_per_key()) for p in parts),
                     tuple(keys))
    return merged_keyed_tensor(parts, layout.keys, layout.length_per_key, layout.blocks)


class _Layout(NamedTuple):
    keys: list[str]
    length_per_key: list[int]
    blocks: list[tuple[int, int, int]]  # (part, first column, end column) in the output order


@functools.lru_cache(maxsize=256)
def _layout(part_keys: tuple[tuple[str, ...], ...], part_widths: tuple[tuple[int, ...], ...],
            keys: tuple[str, ...]) -> _Layout:
    """Where each key's columns sit among the parts; the same for every step of a model."""
    where: dict[str, tuple[int, int, int]] = {}  # key -> (part, first column, width)
    for p, (names, widths) in enumerate(zip(part_keys, part_widths)):
        start = 0
        for key, width in zip(names, widths):
            where[key], start = (p, start, width), start + width
    blocks: list[list[int]] = []
    for key in keys:
        p, start, width = where[key]
        if blocks and blocks[-1][0] == p and blocks[-1][2] == start:
            blocks[-1][2] = start + width
        else:
            blocks.append([p, start, start + width])
    return _Layout(list(keys), [where[k][2] for k in keys], [tuple(b) for b in blocks])


def merge_jagged_dicts(parts: Sequence[dict[str, JaggedTensor]], keys: Sequence[str]) -> dict[str, JaggedTensor]:
    """SPTT step 6 for an unpooled collection (a torchrec EmbeddingCollection): its towers'
    per-feature JaggedTensors as one dict in the original key order (the same objects)."""
    found = {k: v for part in parts for k, v in part.items()}
    return {k: found[k] for k in keys}


def pool_in_process(collection: EmbeddingBagCollection) -> EmbeddingBagCollection:
    """Make a tower collection's calls in one process return its pooled columns uncopied.

    TorchRec's forward concatenates the pooled rows of every feature into one KeyedTensor,
    which merge_keyed_tensors and the model's to_dict() split again: with several towers that
    is one concatenation, one split and both their backwards more per tower than the original
    collection pays once. `pooled_columns` runs the same lookups (the same modules, ids,
    offsets and weights, in the same order) and returns a KeyedTensor that concatenates only if
    its values() are read. Set on the instance: the distributed runtime builds its own
    collections from the tables, so only the one-process model calls it."""
    collection.forward = functools.partial(pooled_columns, collection)
    return collection


def pooled_columns(collection: EmbeddingBagCollection, features: KeyedJaggedTensor) -> KeyedTensor:
    """EmbeddingBagCollection.forward, its output left unconcatenated (pool_in_process)."""
    if not isinstance(features, KeyedJaggedTensor) or features.inverse_indices_or_none() is not None:
        # a TensorDict, or variable batch sizes (inverse indices): TorchRec's own forward
        return EmbeddingBagCollection.forward(collection, features)
    per_key, weighted = features.to_dict(), collection.is_weighted()
    pooled = []
    for bag, names in zip(collection.embedding_bags.values(), ebc_feature_names(collection)):
        for name in names:
            f = per_key[name]
            pooled.append(bag(input=f.values(), offsets=f.offsets(),
                              per_sample_weights=f.weights() if weighted else None).float())
    return pooled_keyed_tensor(ebc_embedding_names(collection), ebc_lengths_per_embedding(collection), pooled)
