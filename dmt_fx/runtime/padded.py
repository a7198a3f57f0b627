"""Tables of any width: pad to a multiple of 4 inside the sharded table, slice on the way out.

FBGEMM's batched tables (under every TorchRec sharded table, on CPU too) need an embedding
dim that is a multiple of 4. The runtime meets that rule itself (docs/widths.md):

* `pad_collection`: the host's collection is sharded with every width rounded up
  (`padded_dim`); the extra columns start at zero (`pad_weights`);
* `HostLookup` (exchange.py) keeps each output's first `dim` columns (`real_columns`) right
  after TorchRec's intra-host output dist, so the peer exchange carries the real widths, and
  the padding columns get zero gradients. SGD, Adagrad and Adam (with or without weight
  decay) leave a zero column with zero gradients at zero, so the padding never trains;
* `TrimmedState`: `state_dict()` shows each padded table as a ShardedTensor of the
  original shape whose shards hold the real columns (copies: a ShardedTensor's shards must
  be contiguous, so a padded table's DCP load lands through `load_state_dict`, which copies
  a tensor or ShardedTensor of the original shape into those columns).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
import torch.nn as nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from dmt_fx._compat import (
    Shard,
    ShardedTensor,
    ShardedTensorMetadata,
    ShardMetadata,
    ebc_embedding_names,
    register_state_dict_post_hook,
    set_ebc_embedding_names,
    sharded_from_local_shards,
    sharded_group,
    state_dict_hooks,
)
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.widths import ALIGN, padded_dim


def pad_collection(ebc: EmbeddingBagCollection) -> EmbeddingBagCollection:
    """`ebc` with every width rounded up, same names and features, on the meta device (the
    sharder allocates the shards)."""
    if all(c.embedding_dim % ALIGN == 0 for c in ebc.embedding_bag_configs()):
        return ebc
    configs = [dataclasses.replace(c, embedding_dim=padded_dim(c.embedding_dim)) for c in ebc.embedding_bag_configs()]
    out = EmbeddingBagCollection(configs, is_weighted=ebc.is_weighted(), device=torch.device("meta"))
    # Keep the original output names (sub_collection keeps a parent's names).
    set_ebc_embedding_names(out, ebc_embedding_names(ebc))
    return out


def table_dims(ebc: EmbeddingBagCollection) -> dict[str, int]:
    """State-dict key of each table -> its real width."""
    return {f"embedding_bags.{c.name}.weight": c.embedding_dim for c in ebc.embedding_bag_configs()}


def pad_weights(weights: dict[str, Any], dims: dict[str, int]) -> dict[str, Any]:
    """The tables' weights with zero columns up to the padded width."""
    out = dict(weights)
    for key, dim in dims.items():
        if dim % ALIGN and key in out:
            weight = out[key].detach()
            out[key] = torch.nn.functional.pad(weight, (0, padded_dim(dim) - dim))
    return out


def real_columns(values: torch.Tensor, widths: Sequence[int]) -> torch.Tensor:
    """Pooled outputs of padded tables [rows, sum(padded widths)] -> [rows, sum(widths)]."""
    if all(w % ALIGN == 0 for w in widths):
        return values
    parts = values.split([padded_dim(w) for w in widths], dim=1)
    return torch.cat([p[:, :w] for p, w in zip(parts, widths)], dim=1)


def trimmed(value: ShardedTensor, dim: int) -> ShardedTensor:
    """`value` (a padded table) as a ShardedTensor of `dim` columns: each shard keeps its
    columns below `dim` (views); a shard of padding columns only drops out."""
    md = value.metadata()
    shards = []
    for s in md.shards_metadata:
        width = min(s.shard_offsets[1] + s.shard_sizes[1], dim) - s.shard_offsets[1]
        if width > 0:
            shards.append(ShardMetadata(list(s.shard_offsets), [s.shard_sizes[0], width], s.placement))
    local = []
    for shard in value.local_shards():
        offsets, sizes = shard.metadata.shard_offsets, shard.metadata.shard_sizes
        width = min(offsets[1] + sizes[1], dim) - offsets[1]
        if width > 0:
            local.append(Shard(shard.tensor[:, :width].contiguous(), ShardMetadata(list(offsets), [sizes[0], width],
                                                                      shard.metadata.placement)))
    size = torch.Size([md.size[0], dim])
    global_md = ShardedTensorMetadata(shards, size, md.tensor_properties)
    return sharded_from_local_shards(local, global_md, process_group=sharded_group(value))


class TrimmedState:
    """State-dict hooks of one sharded lookup over padded tables (see the module docstring).

    Post-hook of the lookup's `state_dict`: padded tables -> `trimmed`. Pre-hook of the rank
    module's `load_state_dict` (it runs before the lookup's own): the value under a padded
    table's key is copied into the real columns and replaced by the lookup's own padded
    ShardedTensor, which TorchRec then loads as its own."""

    def __init__(self, lookup: nn.Module, dims: dict[str, int]) -> None:
        self.lookup = lookup
        self.dims = {k: d for k, d in dims.items() if d % ALIGN}

    def __bool__(self) -> bool:
        return bool(self.dims)

    def post(self, module: nn.Module, state: dict[str, Any], prefix: str, *rest: Any) -> None:
        for key, dim in self.dims.items():
            if isinstance(state.get(prefix + key), ShardedTensor):
                state[prefix + key] = trimmed(state[prefix + key], dim)

    def install(self, physical: nn.Module) -> None:
        path = next(p for p, m in physical.named_modules() if m is self.lookup)
        prefix = path + "." if path else ""
        register_state_dict_post_hook(self.lookup, self.post)

        def pre(module: nn.Module, state: dict[str, Any], *rest: Any) -> None:
            own = None
            for key, dim in self.dims.items():
                if prefix + key not in state:
                    continue
                own = own if own is not None else self._padded_state()
                _fill(own[key], state[prefix + key], dim)
                state[prefix + key] = own[key]

        physical.register_load_state_dict_pre_hook(pre)

    def _padded_state(self) -> dict[str, Any]:
        hooks = state_dict_hooks(self.lookup)
        mine = [k for k, h in hooks.items() if h == self.post]
        saved = {k: hooks.pop(k) for k in mine}  # the lookup's own, padded, state
        try:
            return self.lookup.state_dict()
        finally:
            hooks.update(saved)


def _fill(target: ShardedTensor, value: Any, dim: int) -> None:
    """Copy `value` (a trimmed ShardedTensor of this rank's shards, or a whole tensor of the
    original shape) into the real columns of `target`'s local shards."""
    with torch.no_grad():
        for shard in target.local_shards():
            (r, c), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            width = min(c + nc, dim) - c
            if width <= 0:
                continue
            dest = shard.tensor[:, :width]
            source = _region(value, r, c, nr, width)
            if source.data_ptr() != dest.data_ptr():
                dest.copy_(source)


def _region(value: Any, r: int, c: int, nr: int, nc: int) -> torch.Tensor:
    if isinstance(value, ShardedTensor):
        for shard in value.local_shards():
            if list(shard.metadata.shard_offsets) == [r, c]:
                return shard.tensor[:nr, :nc]
        raise DMTError(f"a ShardedTensor without the local shard at {[r, c]}",
                       "the state dict of this distributed model (its shards) or the original's whole tensor",
                       ["load the checkpoint with torch.distributed.checkpoint into `module.state_dict()` first"])
    return value[r:r + nr, c:c + nc]
