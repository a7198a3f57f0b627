"""What the DMP-based baselines share: find the collections, shard under DMP, start the
shards from the original tables, TorchRec's usual combined optimizer.

Tables use TorchRec's FUSED kernel with the optimizer matching the dense one
(`fused_params`), updated during backward as in production. Plans ask for FUSED
explicitly: for plain parameters `construct_module_sharding_plan` picks the DENSE kernel,
whose sharded tables are ordinary parameters that only a dense optimizer would step. DMP
re-initialises sharded tables, so the shards are filled from the original model's tables.
Dense parameters are data-parallel under DMP's default DDP wrapper (no device_ids on CPU)
and stepped by a `KeyedOptimizerWrapper`; the optimizer returned is
`CombinedOptimizer([dmp.fused_optimizer, dense])`.

Scaling: TorchRec divides embedding gradients by the group size in the backward of every
all-to-all / reduce-scatter (`comm_ops.GRADIENT_DIVISION`, on by default); over a world of
N ranks that is exactly the 1/N DDP applies to the dense gradients, so a per-rank mean
loss trains like the global-batch mean.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ModuleSharder, ShardingEnv, ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from dmt_fx.ir.errors import DMTError
from dmt_fx.runtime.groups import runtime_device
from dmt_fx.runtime.optim import FUSED, copy_into_shards, fused_params

__all__ = ["FUSED", "embedding_collections", "fused_params", "runtime_device", "shard", "sharded_collections",
           "table_weights"]


def embedding_collections(model: nn.Module) -> list[tuple[str, EmbeddingBagCollection]]:
    """(path, collection) of every EmbeddingBagCollection of `model`: what TorchRec shards."""
    found = [(path, m) for path, m in model.named_modules() if isinstance(m, EmbeddingBagCollection)]
    if not found:
        raise DMTError(f"a {type(model).__name__} without a TorchRec EmbeddingBagCollection",
                       "a model whose tables are EmbeddingBagCollections (what TorchRec shards)",
                       ["express the tables as an EmbeddingBagCollection taking a KeyedJaggedTensor"])
    if any(path == "" for path, _ in found):
        raise DMTError("an EmbeddingBagCollection as the whole model",
                       "a model that contains its EmbeddingBagCollection(s) as submodules",
                       ["wrap the collection in a small nn.Module"])
    return found


def sharded_collections(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, collection) of every EmbeddingBagCollection and EmbeddingCollection (sequence,
    unpooled) of `model`, in module order: what the flat baselines shard."""
    found = [(path, m) for path, m in model.named_modules()
             if isinstance(m, (EmbeddingBagCollection, EmbeddingCollection))]
    if not any(isinstance(m, EmbeddingCollection) for _, m in found):
        return embedding_collections(model)  # its refusals: no collection, a collection as the model
    if any(path == "" for path, _ in found):
        raise DMTError(f"a {type(model).__name__} as the whole model", "a model that contains its collections",
                       ["wrap the collection in a small nn.Module"])
    return found


def table_weights(collection: nn.Module) -> dict[str, torch.Tensor]:
    """The collection's full tables by state_dict key, referenced (no copy): `embedding_bags.*`
    of an EmbeddingBagCollection, `embeddings.*` of an EmbeddingCollection. Meta tables are
    left out: DMP allocates only this rank's shards of them and initialises those with the
    table's init_fn (the sharded collection's reset_parameters), never the whole table."""
    prefix = "embeddings." if isinstance(collection, EmbeddingCollection) else "embedding_bags."
    return {k: v for k, v in collection.state_dict(keep_vars=True).items() if k.startswith(prefix) and not v.is_meta}


def shard(model: nn.Module, plan: Mapping[str, Any], sharder: ModuleSharder | Sequence[ModuleSharder],
          tables: Mapping[str, Mapping[str, torch.Tensor]], optimizer_class: type,
          optimizer_kwargs: Mapping[str, Any]) -> tuple[DistributedModelParallel, CombinedOptimizer]:
    """`model` under DMP over the whole world with `plan` (module path -> module plan) and
    `sharder` (one, or one per collection type); `tables` (module path -> full tables by
    key) are copied into the new shards."""
    sharders = list(sharder) if isinstance(sharder, Sequence) else [sharder]
    dmp = DistributedModelParallel(model, env=ShardingEnv.from_process_group(torch.distributed.group.WORLD),
                                   device=runtime_device(), plan=ShardingPlan(dict(plan)), sharders=sharders)
    for path, weights in tables.items():
        state = dmp.module.get_submodule(path).state_dict()
        copy_into_shards({k: v for k, v in state.items() if k in weights}, weights)  # meta tables: init_fn
    dense = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    optimizer = CombinedOptimizer([("fused", dmp.fused_optimizer),
                                   ("dense", KeyedOptimizerWrapper(
                                       dense, lambda ps: optimizer_class(ps, **optimizer_kwargs)))])
    return dmp, optimizer
