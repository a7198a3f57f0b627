"""Functions the rewritten graph calls: the DMT vocabulary of the logical model.

In one process the collectives are the identity: every sample keeps exactly the values it
had, which is what makes the logical model equal to the original. `dmt_fx.distribute`
lowers the same nodes to real peer all-to-alls; the graph carries group *names* only.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

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
    return _select_by_slices(kjt, indices, keys)


@functools.lru_cache(maxsize=256)
def _positions(given: tuple[str, ...], keys: tuple[str, ...]) -> tuple[int, ...] | None:
    """Where the tower's keys sit among the KJT's (None: the same keys in the same order);
    the same for every step of a model, worked out once."""
    if given == keys:
        return None
    index = {k: i for i, k in enumerate(given)}
    return tuple(index[k] for k in keys)


def _gathered_attribute(name: str) -> property:
    """An attribute KeyedJaggedTensor reads directly (`_values`, ...), served by _gathered."""
    def setter(self: _TowerFeatures, value: torch.Tensor | None) -> None:
        if value is None and self.__dict__.get("_pending") is not None:
            return  # KeyedJaggedTensor.__init__'s placeholder: still to be gathered
        self._gathered(name)  # gather the others before one is replaced
        self.__dict__[name] = value
    return property(lambda self: self._gathered(name), setter)


class _TowerFeatures(KeyedJaggedTensor):
    """A tower's KeyedJaggedTensor whose ids, lengths and weights are gathered from the
    source KJT when first read, not when it is made.

    In one process the tower's collection reads only `to_dict()` (the source's per-key
    JaggedTensors, shared by all towers), so gathering them eagerly cost two copies per
    tower per step that nothing read. Made by _select_by_slices (`_pending`: the source KJT
    and the tower's key positions in it). Whatever does read them (`values()`, a
    KJTAllToAll, pytree flattening: all go through these attributes) gets exactly what
    kjt.permute returns."""

    def _gathered(self, name: str) -> torch.Tensor | None:
        pending = self.__dict__.get("_pending")
        if pending is not None:
            source, indices = pending
            stride, offset_per_key = source.stride(), source.offset_per_key()
            values_at = [(offset_per_key[i], offset_per_key[i + 1]) for i in indices]
            weights = source.weights_or_none()
            self.__dict__.update(_pending=None, _gathered_values=_gather(source.values(), values_at),
                                 _gathered_lengths=_gather(source.lengths(), [(i * stride, (i + 1) * stride)
                                                                              for i in indices]),
                                 _gathered_weights=None if weights is None else _gather(weights, values_at))
        return self.__dict__.get(name)

    _values = _gathered_attribute("_gathered_values")
    _lengths = _gathered_attribute("_gathered_lengths")
    _weights = _gathered_attribute("_gathered_weights")

    def to_dict(self, compute_offsets: bool = True) -> dict[str, JaggedTensor]:
        # KeyedJaggedTensor.to_dict reads values() and lengths() before it looks at its cache
        if self._jt_dict is not None:
            return self._jt_dict
        return super().to_dict(compute_offsets)


def _select_by_slices(kjt: KeyedJaggedTensor, indices: tuple[int, ...], keys: Sequence[str]) -> KeyedJaggedTensor:
    """What kjt.permute(indices) returns, built from one slice per key and a concatenation
    (when read): a tower takes a few keys, and for those this is several times cheaper on CPU
    than the general permute kernel (which also handles repeated and variable-batch keys).

    The result carries the source's per-key JaggedTensors (`jt_dict`): a TorchRec collection
    reads its features through `to_dict()`, which the source computes once (and caches) for
    all towers, as the original collection did once, instead of once per tower. Same
    tensors as the original lookup reads: bit for bit. The spans to gather are worked out
    only if something reads the ids."""
    # KeyedJaggedTensor.to_dict evaluates all its arguments before it returns its cache
    per_key = kjt.__dict__.get("_jt_dict") or kjt.to_dict()
    length_per_key = kjt.length_per_key()
    tower = _TowerFeatures.__new__(_TowerFeatures)
    tower.__dict__.update(_blank_kjt(), _pending=(kjt, indices), _keys=list(keys), _stride=kjt.stride(),
                          _length_per_key=[length_per_key[i] for i in indices], _jt_dict={k: per_key[k] for k in keys})
    return tower


@functools.lru_cache(maxsize=1)
def _blank_kjt() -> dict:
    """The attributes KeyedJaggedTensor.__init__ sets (its fields and empty caches), made once
    by __init__ itself: a tower KJT copies them and sets its own keys, stride, lengths per key
    and per-key JaggedTensors, instead of running __init__'s checks per tower and step."""
    blank = KeyedJaggedTensor(keys=[], values=torch.empty(0, dtype=torch.int64)).__dict__
    return {k: v for k, v in blank.items() if k not in ("_values", "_lengths", "_weights")}  # _gathered's


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
    Keys that stay adjacent move as one block: each part is split once, at the blocks' edges.
    The concatenation happens when the values are first read: a model that reads the
    collection's output per key (`to_dict()`, what TorchRec's DLRM does) gets the parts'
    own per-key columns and no concatenation at all."""
    if len(parts) == 1 and list(parts[0].keys()) == list(keys):
        return parts[0]
    layout = _layout(tuple(tuple(p.keys()) for p in parts), tuple(tuple(p.length_per_key()) for p in parts),
                     tuple(keys))
    return _MergedTensor(parts, layout)


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


class _LazyKeyedTensor(KeyedTensor):
    """A KeyedTensor whose values() are concatenated from its pieces only when first read;
    to_dict() and device() answer from the pieces until then. Subclasses say how to
    concatenate (`_concat`), split per key (`_columns`) and find the device (`_device_of`)."""

    def __init__(self, keys: list[str], length_per_key: list[int], pieces: Any) -> None:
        self._lazy = pieces
        super().__init__(keys=keys, length_per_key=length_per_key, values=None)

    def _concat(self, pieces: Any) -> torch.Tensor:
        raise NotImplementedError

    def _columns(self, pieces: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _device_of(self, pieces: Any) -> torch.device:
        raise NotImplementedError

    @property
    def _values(self) -> torch.Tensor:
        pieces = self.__dict__.get("_lazy")
        if pieces is not None:
            self.__dict__.update(_lazy=None, _eager=self._concat(pieces))
        return self.__dict__["_eager"]

    @_values.setter
    def _values(self, value: torch.Tensor | None) -> None:
        if value is not None or self.__dict__.get("_lazy") is None:  # KeyedTensor.__init__ sets None
            self.__dict__.update(_lazy=None, _eager=value)

    def to_dict(self) -> dict[str, torch.Tensor]:
        pieces = self.__dict__.get("_lazy")
        return super().to_dict() if pieces is None else self._columns(pieces)

    def device(self) -> torch.device:
        pieces = self.__dict__.get("_lazy")
        return super().device() if pieces is None else self._device_of(pieces)


class _MergedTensor(_LazyKeyedTensor):
    """merge_keyed_tensors' result: its values are concatenated from the parts when first read."""

    def __init__(self, parts: Sequence[KeyedTensor], layout: _Layout) -> None:
        super().__init__(layout.keys, layout.length_per_key, (parts, layout))

    def _concat(self, pending: tuple[Sequence[KeyedTensor], _Layout]) -> torch.Tensor:
        pieces = _blocks(pending[0], pending[1].blocks)
        return torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]

    def _columns(self, pending: tuple[Sequence[KeyedTensor], _Layout]) -> dict[str, torch.Tensor]:
        """Each key's columns as the part that computed them has them (the same values)."""
        columns = {k: v for part in pending[0] for k, v in part.to_dict().items()}
        return {key: columns[key] for key in self._keys}

    def _device_of(self, pending: tuple[Sequence[KeyedTensor], _Layout]) -> torch.device:
        return pending[0][0].device()


def _blocks(parts: Sequence[KeyedTensor], blocks: list[tuple[int, int, int]]) -> list[torch.Tensor]:
    """The column blocks, each part split once (one backward for all its blocks)."""
    by_part: dict[int, dict[int, torch.Tensor]] = {}
    for p, part in enumerate(parts):
        edges = sorted({0, part.values().shape[1]} | {e for b in blocks if b[0] == p for e in b[1:]})
        sizes = [b - a for a, b in zip(edges, edges[1:])]
        by_part[p] = dict(zip(edges, part.values().split(sizes, dim=1)))
    return [by_part[p][start] for p, start, _ in blocks]


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
    for bag, names in zip(collection.embedding_bags.values(), collection._feature_names):
        for name in names:
            f = per_key[name]
            pooled.append(bag(input=f.values(), offsets=f.offsets(),
                              per_sample_weights=f.weights() if weighted else None).float())
    return _PooledColumns(collection._embedding_names, collection._lengths_per_embedding, pooled)


class _PooledColumns(_LazyKeyedTensor):
    """A collection's pooled rows per feature; concatenated (as TorchRec does) when first read."""

    def __init__(self, keys: list[str], length_per_key: list[int], pooled: list[torch.Tensor]) -> None:
        super().__init__(keys, length_per_key, pooled)

    def _concat(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(pooled, dim=1)

    def _columns(self, pooled: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(zip(self._keys, pooled))

    def _device_of(self, pooled: list[torch.Tensor]) -> torch.device:
        return pooled[0].device
