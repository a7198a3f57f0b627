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

from typing import Any, Mapping

import torch
import torch.nn as nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ModuleSharder, ShardingEnv, ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from dmt_fx.ir.errors import DMTError
from dmt_fx.runtime.groups import runtime_device
from dmt_fx.runtime.optim import FUSED, copy_into_shards, fused_params

__all__ = ["FUSED", "embedding_collections", "fused_params", "runtime_device", "shard", "table_weights"]


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


def table_weights(ebc: nn.Module) -> dict[str, torch.Tensor]:
    """The collection's full tables by state_dict key, referenced (no copy). Meta tables are
    left out: DMP allocates only this rank's shards of them and initialises those with the
    table's init_fn (ShardedEmbeddingBagCollection.reset_parameters), never the whole table."""
    return {k: v for k, v in ebc.state_dict(keep_vars=True).items() if k.startswith("embedding_bags.") and not v.is_meta}


def shard(model: nn.Module, plan: Mapping[str, Any], sharder: ModuleSharder,
          tables: Mapping[str, Mapping[str, torch.Tensor]], optimizer_class: type,
          optimizer_kwargs: Mapping[str, Any]) -> tuple[DistributedModelParallel, CombinedOptimizer]:
    """`model` under DMP over the whole world with `plan` (module path -> module plan);
    `tables` (module path -> full tables by key) are copied into the new shards."""
    dmp = DistributedModelParallel(model, env=ShardingEnv.from_process_group(torch.distributed.group.WORLD),
                                   device=runtime_device(), plan=ShardingPlan(dict(plan)), sharders=[sharder])
    for path, weights in tables.items():
        state = dmp.module.get_submodule(path).state_dict()
        copy_into_shards({k: v for k, v in state.items() if k in weights}, weights)  # meta tables: init_fn
    dense = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    optimizer = CombinedOptimizer([("fused", dmp.fused_optimizer),
                                   ("dense", KeyedOptimizerWrapper(
                                       dense, lambda ps: optimizer_class(ps, **optimizer_kwargs)))])
    return dmp, optimizer
