"""KeyedJaggedTensor and KeyedTensor subclasses that compute their values only when read.

They override TorchRec's private fields (`_values`, `_lengths`, `_weights`, and the caches
`__init__` sets), so they live here, not in the contract layer (dmt_fx/ir/ops.py calls them).
Checked on torchrec 1.8.0; tests/test_compat.py checks the fields they rely on, and
tests/test_lean_single_process.py that they equal their eager forms and what they save.

What they buy, in one process (the identity DMT model of the built-in DLRM, topology 2x2,
one training step): 143 aten/fbgemm ops instead of 181 with their eager forms (the original
model runs 155), and about a fifth of the step's CPU time (+23-24% without them, measured
under load); the table per subclass and the command: docs/compat.md.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import torch
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

# KeyedJaggedTensor's fields that a tower KJT serves lazily (read directly by its methods).
KJT_LAZY_FIELDS = ("_values", "_lengths", "_weights")


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
    tower per step that nothing read. Made by tower_features (`_pending`: the source KJT
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


def tower_features(kjt: KeyedJaggedTensor, indices: tuple[int, ...], keys: Sequence[str]) -> KeyedJaggedTensor:
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
    return {k: v for k, v in blank.items() if k not in KJT_LAZY_FIELDS}  # _gathered's


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

    def _concat(self, pending: tuple[Sequence[KeyedTensor], list[tuple[int, int, int]]]) -> torch.Tensor:
        pieces = _blocks(*pending)
        return torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]

    def _columns(self, pending: tuple[Sequence[KeyedTensor], list[tuple[int, int, int]]]) -> dict[str, torch.Tensor]:
        """Each key's columns as the part that computed them has them (the same values)."""
        columns = {k: v for part in pending[0] for k, v in part.to_dict().items()}
        return {key: columns[key] for key in self._keys}

    def _device_of(self, pending: tuple[Sequence[KeyedTensor], list[tuple[int, int, int]]]) -> torch.device:
        return pending[0][0].device()


def merged_keyed_tensor(parts: Sequence[KeyedTensor], keys: list[str], length_per_key: list[int],
                        blocks: list[tuple[int, int, int]]) -> KeyedTensor:
    """The KeyedTensor of `keys` whose columns are `blocks` (part, first column, end column)
    of `parts`, in order: concatenated when its values are first read."""
    return _MergedTensor(keys, length_per_key, (parts, blocks))


def _blocks(parts: Sequence[KeyedTensor], blocks: list[tuple[int, int, int]]) -> list[torch.Tensor]:
    """The column blocks, each part split once (one backward for all its blocks)."""
    by_part: dict[int, dict[int, torch.Tensor]] = {}
    for p, part in enumerate(parts):
        edges = sorted({0, part.values().shape[1]} | {e for b in blocks if b[0] == p for e in b[1:]})
        sizes = [b - a for a, b in zip(edges, edges[1:])]
        by_part[p] = dict(zip(edges, part.values().split(sizes, dim=1)))
    return [by_part[p][start] for p, start, _ in blocks]


class _PooledColumns(_LazyKeyedTensor):
    """A collection's pooled rows per feature; concatenated (as TorchRec does) when first read."""

    def _concat(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(pooled, dim=1)

    def _columns(self, pooled: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(zip(self._keys, pooled))

    def _device_of(self, pooled: list[torch.Tensor]) -> torch.device:
        return pooled[0].device


def pooled_keyed_tensor(keys: list[str], length_per_key: list[int], pooled: list[torch.Tensor]) -> KeyedTensor:
    """The KeyedTensor of `keys` whose columns are `pooled` (one tensor per key): concatenated
    when its values are first read."""
    return _PooledColumns(keys, length_per_key, pooled)
