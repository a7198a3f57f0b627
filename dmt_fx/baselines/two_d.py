"""The ``torchrec-2d`` baseline: TorchRec 2D sparse parallelism (`DMPCollection`) on CPU / gloo.

2D parallelism shards the tables inside a *sharding group* and replicates the shards across
groups; after every optimizer step `DMPCollection.sync()` averages the shards' weights and
optimizer state over each *replica group*. Layout (TorchRec's default,
`use_inter_host_allreduce=False`): a sharding group takes one rank of every host (group g =
local rank g of each host), so the embedding all-to-all crosses hosts among H ranks, and
the replica group is the ranks of one host, so the weight sync stays on the fast links.
Tables are placed table-wise inside the sharding group (largest first onto the least
loaded of its H ranks), FUSED kernels; dense parameters are data-parallel over the world
(DMP's DDP on the global group), as in TorchRec.

Why a subclass (`dmt_fx._compat.CpuDMPCollection`, which holds every private member
it touches): torchrec 1.8's `DMPCollection.__init__` asserts a CUDA or MTIA device, a guard,
not a kernel dependency.

With SGD and a sync every step this trains exactly like the single-process model (the
average of the groups' updates is the global-batch update); with Adagrad / Adam the
averaged optimizer state makes it an approximation, as it is on GPU.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.tensor import DTensor
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DMPCollection
from torchrec.distributed.sharding_plan import construct_module_sharding_plan, table_wise
from torchrec.distributed.types import ShardingPlan
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from dmt_fx._compat import CpuDMPCollection
from dmt_fx.baselines import dmp
from dmt_fx.baselines.registry import FLAT, register_baseline
from dmt_fx.ir.plan import TowerPlan
from dmt_fx.ir.topology import Topology

__all__ = ["CpuDMPCollection", "SyncingOptimizer", "build_2d", "local_shards", "sharding_group_size"]


class SyncingOptimizer(CombinedOptimizer):
    """TorchRec's combined optimizer that calls `DMPCollection.sync()` after every step (the
    fused table updates ran in backward; the dense step runs first)."""

    def __init__(self, optimizers: list, collection: DMPCollection) -> None:
        super().__init__(optimizers)
        self._collection = collection

    def step(self, closure: Any = None) -> None:
        super().step(closure)
        self._collection.sync()


def local_shards(value: Any) -> list[tuple[tuple[int, int], torch.Tensor]]:
    """((row, col) offset, tensor) of this rank's pieces of a 2-D state-dict value: TorchRec
    writes DTensors over a LocalShardsWrapper there, not ShardedTensors."""
    if isinstance(value, DTensor):
        wrapper = value.to_local()
        return [(tuple(o), t) for o, t in zip(wrapper.local_offsets(), wrapper.local_shards())]
    return [(tuple(s.metadata.shard_offsets), s.tensor) for s in value.local_shards()]


def copy_into_local_shards(state: Mapping[str, Any], full: Mapping[str, torch.Tensor]) -> None:
    """Start this rank's shards from the original tables (DMP made new ones)."""
    with torch.no_grad():
        for key, value in state.items():
            if key not in full:  # a meta table (dmp.table_weights): DMP's init_fn started its shards
                continue
            for (row, col), shard in local_shards(value):
                shard.copy_(full[key][row:row + shard.shape[0], col:col + shard.shape[1]])


def sharding_group_size(topology: Topology) -> int:
    """One rank of every host per sharding group (TorchRec's default 2-D layout)."""
    return topology.num_hosts


def _table_wise_plan(model: nn.Module, group_size: int, sharder: EmbeddingBagCollectionSharder) -> ShardingPlan:
    load = [0] * group_size
    plan = {}
    for path, ebc in dmp.embedding_collections(model):
        per_table = {}
        for config in sorted(ebc.embedding_bag_configs(), key=lambda c: (-c.num_embeddings * c.embedding_dim, c.name)):
            least = min(range(group_size), key=lambda r: (load[r], r))
            load[least] += config.num_embeddings * config.embedding_dim
            per_table[config.name] = table_wise(rank=least, compute_kernel=dmp.FUSED)
        plan[path] = construct_module_sharding_plan(ebc, per_table, sharder=sharder, local_size=group_size,
                                                    world_size=group_size, device_type=dmp.runtime_device().type)
    return ShardingPlan(plan)


def build_2d(model: nn.Module, *, topology: Topology, optimizer_class: type, optimizer_kwargs: Mapping[str, Any],
             plan: TowerPlan | None = None) -> tuple[CpuDMPCollection, SyncingOptimizer]:
    """The original model under 2D sparse parallelism (the tower plan is not used)."""
    sharder = EmbeddingBagCollectionSharder(fused_params=dmp.fused_params(optimizer_class, optimizer_kwargs))
    group_size = sharding_group_size(topology)
    sharding_plan = _table_wise_plan(model, group_size, sharder)
    tables = {path: dmp.table_weights(ebc) for path, ebc in dmp.embedding_collections(model)}
    collection = CpuDMPCollection(model, dmp.runtime_device(), sharding_plan, topology.world_size, group_size,
                                  dist.group.WORLD, [sharder])
    for path, weights in tables.items():
        copy_into_local_shards(collection.module.get_submodule(path).state_dict(), weights)
    dense = dict(in_backward_optimizer_filter(collection.named_parameters()))
    optimizer = SyncingOptimizer([("fused", collection.fused_optimizer),
                                  ("dense", KeyedOptimizerWrapper(dense, lambda ps: optimizer_class(ps, **optimizer_kwargs)))],
                                 collection)
    return collection, optimizer


register_baseline("torchrec-2d", build_2d, family=FLAT)
