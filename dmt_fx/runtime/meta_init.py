"""Models built on the meta device: no rank ever materialises a whole table.

Production models are built with their tables (and often everything) on the meta device,
because no host holds them. `distribute` then does what TorchRec's DMP does for such a model:

* `move_real_tensors` (`place_on`): moves the tensors that have values; meta ones stay meta;
* tables (`fill_shards`, from the lowering): the sharder allocates only this rank's shards of
  its host's tables (the unsharded collection stays on meta) and initialises them with each
  table's own initialiser: a TorchRec table's `EmbeddingBagConfig.init_fn`, applied by
  `ShardedEmbeddingBagCollection.reset_parameters` as under DMP; a plain `nn.EmbeddingBag` /
  `nn.Embedding` table (or a joint table owned by one) gets its `reset_parameters` init,
  normal(0, 1) drawn shard by shard, with its `padding_idx` row zero. Padding columns
  (`padded.py`) start at zero. A meta table with no known initialiser (a bare Parameter read
  by `F.embedding_bag`) is refused (`init_of`): guessing would train a model nobody built;
* dense layers still on meta after the lowering (`materialise_dense`): `to_empty` and the
  module's own `reset_parameters`, as DMP's `init_parameters`; the world's DDP then
  broadcasts rank 0's values, so every rank starts from one model. A meta module without
  `reset_parameters` is refused the same way;
* `weights_from_rank0=True` is refused (`refuse_rank0_weights`): rank 0 has no weights to send.

Real tables keep today's path: `copy_into_shards` fills the shards from the original weights.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn

from dmt_fx._compat import ShardedTensor
from dmt_fx.ir.errors import DMTError
from dmt_fx.runtime.optim import copy_into_shards
from dmt_fx.runtime.plain import PlainLookup, table_attr

ShardInit = Callable[[torch.Tensor, int], None]  # (a local shard, its first row) -> filled in place
TABLE_MODULES = (nn.Embedding, nn.EmbeddingBag)


def meta_tensors(module: nn.Module) -> list[str]:
    """Names of `module`'s parameters and buffers on the meta device."""
    return [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]


def refuse_rank0_weights(module: nn.Module, weights_from_rank0: bool) -> None:
    """weights_from_rank0 broadcasts rank 0's model: a meta model has none to send."""
    if not weights_from_rank0:
        return
    meta = meta_tensors(module)
    if meta:
        raise DMTError(f"weights_from_rank0=True with {len(meta)} tensors on the meta device (e.g. {meta[0]})",
                       "real weights on rank 0 to broadcast, or weights_from_rank0=False for a meta model",
                       ["pass weights_from_rank0=False: each rank initialises its own shards with the table's "
                        "initialiser and DDP starts the dense layers from rank 0's",
                        "or build the model on a real device (only if one host holds it whole)"])


def move_real_tensors(module: nn.Module, device: torch.device) -> None:
    """`module.to(device)` for the tensors with values; meta tensors stay (Module.to refuses them)."""
    if not meta_tensors(module):
        module.to(device)
        return
    with torch.no_grad():
        for owner in module.modules():
            for param in owner.parameters(recurse=False):
                if not param.is_meta and param.device != device:
                    param.data = param.data.to(device)
            for name, buffer in owner.named_buffers(recurse=False):
                if not buffer.is_meta and buffer.device != device:
                    setattr(owner, name, buffer.to(device))


def init_of(table: nn.Module | None, padding_idx: int | None, name: str) -> ShardInit:
    """The initialiser of a plain meta table's shards: `table`'s reset_parameters init."""
    if not isinstance(table, TABLE_MODULES):
        raise DMTError(f"table {name} on the meta device, owned by {type(table).__name__}",
                       "a meta table whose initialiser is known: an nn.EmbeddingBag / nn.Embedding or a "
                       "TorchRec EmbeddingBagConfig (init_fn)",
                       ["build the table as nn.EmbeddingBag(..., device='meta') or in an EmbeddingBagCollection",
                        "or build it on a real device with the values you want"])

    def normal_rows(shard: torch.Tensor, first_row: int) -> None:
        nn.init.normal_(shard)  # nn.Embedding(Bag).reset_parameters: normal(0, 1) ...
        if padding_idx is not None and first_row <= padding_idx < first_row + shard.shape[0]:
            shard[padding_idx - first_row].zero_()  # ... and a zero padding_idx row
    return normal_rows


def plain_inits(gm: nn.Module, lookups: Sequence[PlainLookup]) -> dict[str, ShardInit]:
    """How a host collection's meta plain tables start (its state-dict keys): `init_of` their owner."""
    inits = {}
    for lk in lookups:
        weight = lk.weight or lk.param  # a joint table's field: the whole weight's owner
        if gm.get_parameter(weight).is_meta:
            owner = gm.get_submodule(weight.rpartition(".")[0])
            inits[f"embedding_bags.{table_attr(lk.table)}.weight"] = init_of(owner, lk.padding_idx, weight)
    return inits


def fill_shards(sharded_state: Mapping[str, object], weights: Mapping[str, torch.Tensor], dims: Mapping[str, int],
                inits: Mapping[str, ShardInit] | None = None) -> None:
    """Start a freshly sharded collection's shards: real `weights` are copied in; a meta
    weight keeps the sharder's init_fn values, or gets `inits[key]`, and its padding
    columns (past `dims[key]`) are zeroed."""
    real = {k: v for k, v in weights.items() if not v.is_meta}
    copy_into_shards({k: v for k, v in sharded_state.items() if k in real}, real)
    with torch.no_grad():
        for key, value in sharded_state.items():
            if key in real or not isinstance(value, ShardedTensor):
                continue
            for shard in value.local_shards():
                (row, col), (_, cols) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                if inits and key in inits:
                    inits[key](shard.tensor, row)
                dim = dims.get(key, col + cols)
                if col + cols > dim:
                    shard.tensor[:, max(dim - col, 0):].zero_()


def materialise_dense(module: nn.Module, device: torch.device) -> None:
    """Dense modules still on meta (the tables are sharded by now): allocate each on `device`
    and run its own reset_parameters, as DMP does; refuse any that has none."""
    for path, owner in module.named_modules():
        own = [n for n, t in [*owner.named_parameters(recurse=False), *owner.named_buffers(recurse=False)]
               if t.is_meta]
        if not own:
            continue
        name = f"{path}.{own[0]}" if path else own[0]
        if isinstance(owner, TABLE_MODULES):  # a table the lowering did not shard: never materialise it
            raise DMTError(f"table {name} still on the meta device after sharding", "every meta table sharded",
                           ["report this: the lowering left a table of the model unsharded"])
        if not callable(getattr(owner, "reset_parameters", None)):
            raise DMTError(f"{name} on the meta device in a {type(owner).__name__} without reset_parameters()",
                           "meta tensors only in modules that can initialise themselves (reset_parameters)",
                           [f"give {type(owner).__name__} a reset_parameters() that initialises {', '.join(own)}",
                            "or build the dense layers on a real device (only the tables need the meta device)"])
        owner.to_empty(device=device, recurse=False)
        owner.reset_parameters()
