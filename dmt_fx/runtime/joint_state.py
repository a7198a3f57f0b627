"""Checkpoints of joint tables split by field: one key, as in the original model.

A joint table (one weight for all fields, per-field row offsets) is one key in the original
model's state dict, but each of its fields is a TorchRec table of its tower's host here,
saved by the rank module under the field's own key (`joint_field_key`). `JointState` turns
them back into one `ShardedTensor` under the original key, over the whole world, whose
shards are the field tables' shards at their row offsets (views of the same storage, so
`torch.distributed.checkpoint` saves and loads them in place), and splits it again when a
state dict is loaded. Its global metadata is gathered once, at `distribute` (every rank calls
it), so `state_dict()` needs no collective.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from dmt_fx._compat import (
    Shard,
    ShardedTensor,
    ShardedTensorMetadata,
    ShardMetadata,
    TensorProperties,
    sharded_from_local_shards,
)
from dmt_fx.ir.errors import DMTError
from dmt_fx.runtime.plain import PlainLookup

_Spec = tuple[str, tuple[int, ...], tuple[int, ...], str]  # (original key, offsets, sizes, placement)


@dataclasses.dataclass(frozen=True)
class JointTable:
    key: str  # the original weight's key
    size: tuple[int, int]
    fields: tuple[tuple[str, int], ...]  # (the field's key on the rank, its row offset)
    dtype: torch.dtype


def joint_tables(gm: nn.Module, lookups: Sequence[PlainLookup]) -> list[JointTable]:
    """The joint tables among the plain lookups (fields whose key is not their weight's)."""
    fields: dict[str, dict[str, int]] = {}
    for lk in lookups:
        if lk.weight and lk.param != lk.weight:
            fields.setdefault(lk.weight, {})[lk.param] = lk.row_offset
    tables = []
    for key, parts in fields.items():
        weight = gm.get_parameter(key)
        tables.append(JointTable(key, tuple(weight.shape), tuple(parts.items()), weight.dtype))
    return tables


def _shifted(md: ShardMetadata, rows: int, device: torch.device) -> ShardMetadata:
    """A field shard's metadata in the joint weight: rows moved by the field's offset, placed
    on this rank of the world (TorchRec placed it on a rank of the host's group)."""
    offsets = [md.shard_offsets[0] + rows, *md.shard_offsets[1:]]
    return ShardMetadata(offsets, list(md.shard_sizes), f"rank:{dist.get_rank()}/{device}")


class JointState:
    """Merges the fields of each joint table into one world ShardedTensor, and splits it."""

    def __init__(self, tables: list[JointTable], metadata: dict[str, ShardedTensorMetadata],
                 order: Sequence[str]) -> None:
        self.tables, self.metadata = tables, metadata
        self.order = {k: i for i, k in enumerate(order)}

    @classmethod
    def gather(cls, physical: nn.Module, tables: list[JointTable], order: Sequence[str]) -> JointState:
        """On every rank (one all_gather_object over the world): every rank's field shards."""
        state = physical.state_dict()
        mine: list[_Spec] = []
        for table in tables:
            for key, rows in table.fields:
                for shard in _local_shards(state.get(key)):
                    md = _shifted(shard.metadata, rows, shard.tensor.device)
                    mine.append((table.key, tuple(md.shard_offsets), tuple(md.shard_sizes), str(md.placement)))
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        metadata = {}
        for table in tables:
            shards = [ShardMetadata(list(o), list(s), p) for rank in everyone for k, o, s, p in rank if k == table.key]
            properties = TensorProperties(dtype=table.dtype, requires_grad=False)
            metadata[table.key] = ShardedTensorMetadata(shards, torch.Size(table.size), properties)
        return cls(tables, metadata, order)

    def merge(self, state: dict[str, Any]) -> dict[str, Any]:
        """state_dict(): the fields' keys -> the original key (a ShardedTensor over the world)."""
        for table in self.tables:
            local = []
            for key, rows in table.fields:
                for shard in _local_shards(state.pop(key, None)):
                    local.append(Shard(shard.tensor, _shifted(shard.metadata, rows, shard.tensor.device)))
            state[table.key] = sharded_from_local_shards(local, self.metadata[table.key])
        ordered = sorted(state.items(), key=lambda kv: self.order.get(kv[0], len(self.order)))
        return dict(ordered)

    def split(self, state: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
        """load_state_dict(): the original key -> the fields' keys, each filled with its rows
        (from a ShardedTensor made by `merge`, or from the original model's whole tensor)."""
        out = dict(state)
        for table in self.tables:
            if table.key not in out:
                continue
            value = out.pop(table.key)
            for key, rows in table.fields:
                if key in current:
                    _fill(current[key], value, rows, table.key)
                    out[key] = current[key]
        return out


def _local_shards(value: Any) -> list[Shard]:
    return value.local_shards() if isinstance(value, ShardedTensor) else []


def _fill(field: ShardedTensor, value: Any, rows: int, key: str) -> None:
    """Copy a field's rows of `value` into the field table's local shards."""
    for shard in field.local_shards():
        start = [shard.metadata.shard_offsets[0] + rows, *shard.metadata.shard_offsets[1:]]
        source = _region(value, start, list(shard.metadata.shard_sizes), key)
        if source.data_ptr() != shard.tensor.data_ptr():  # a state dict of this module: already in place
            shard.tensor.detach().copy_(source)


def _region(value: Any, start: list[int], sizes: list[int], key: str) -> torch.Tensor:
    if isinstance(value, ShardedTensor):
        for shard in value.local_shards():
            if list(shard.metadata.shard_offsets) == start and list(shard.metadata.shard_sizes) == sizes:
                return shard.tensor
        raise DMTError(f"a ShardedTensor for {key!r} without the local shard at {start} of size {sizes}",
                       "the state dict of this distributed model (its shards) or the original's whole tensor",
                       ["load the checkpoint with torch.distributed.checkpoint into `module.state_dict()` first"])
    if not isinstance(value, torch.Tensor):
        raise DMTError(f"a {type(value).__name__} for {key!r}", "a tensor or a ShardedTensor",
                       ["pass a state dict of the original model or of this distributed model"])
    region = value
    for dim, (s, n) in enumerate(zip(start, sizes)):
        region = region.narrow(dim, s, n)
    return region
