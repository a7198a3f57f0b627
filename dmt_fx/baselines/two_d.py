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

Why a subclass: torchrec 1.8's `DMPCollection.__init__` opens with
`assert device.type == "cuda" or device.type == "mtia"` (torchrec/distributed/model_parallel.py,
class DMPCollection, first line of __init__). That is a guard, not a kernel dependency: the
process groups come from a `DeviceMesh` of any device type, the sharding is DMP's, and the
weight sync is an all-reduce. `CpuDMPCollection.__init__` runs the same steps for the
default context (process groups, plan remap, ShardingEnv2D, DMP init, sync tensor cache)
without that line; submodule configs and sharded relay (NCCL-only) are left out. The sync
all-reduce uses ReduceOp.AVG, which gloo does not implement, so the sync is given TorchRec's
own hook (`custom_all_reduce`): SUM over the replica group, then divide.

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
from torchrec.distributed.model_parallel import DistributedModelParallel, DMPCollection, DMPCollectionContext
from torchrec.distributed.sharding_plan import construct_module_sharding_plan, table_wise
from torchrec.distributed.types import ShardingEnv2D, ShardingPlan, ShardingStrategy, ShardMetadata
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from dmt_fx.baselines import dmp
from dmt_fx.baselines.registry import FLAT, register_baseline
from dmt_fx.ir.plan import TowerPlan
from dmt_fx.ir.topology import Topology

__all__ = ["CpuDMPCollection", "SyncingOptimizer", "build_2d", "local_shards", "sharding_group_size"]

GUARD = ("torchrec/distributed/model_parallel.py, DMPCollection.__init__: "
         "assert device.type == 'cuda' or device.type == 'mtia' (a guard; bypassed by CpuDMPCollection)")


class CpuDMPCollection(DMPCollection):
    """DMPCollection without its CUDA/MTIA guard, with a gloo-capable weight sync."""

    def __init__(self, module: nn.Module, device: torch.device, plan: ShardingPlan, world_size: int,
                 sharding_group_size: int, global_pg: dist.ProcessGroup, sharders: list[Any]) -> None:
        # Step 1: what DMPCollection.__init__ sets before its groups (no custom hook yet).
        self._device, self._pg = device, global_pg
        self._global_rank = dist.get_rank(global_pg)
        self._custom_all_reduce = self._average_over_replicas
        self._sharder_map = {sharder.module_type: sharder for sharder in sharders}
        ctx = DMPCollectionContext(module=None, plan=plan, sharding_group_size=sharding_group_size,
                                   node_group_size=None, use_inter_host_allreduce=False,
                                   sharding_strategy=ShardingStrategy.DEFAULT)
        self._default_ctx, self._submodule_ctxs, self._ctxs = ctx, [], [ctx]
        self._use_sharded_relay, self._sharded_relay_state = False, None
        # Step 2: the 2-D mesh (replicate x shard) and the plan moved onto this group's ranks.
        ctx.device_mesh, ctx.sharding_pg, ctx.replica_pg = self._create_process_groups(
            global_rank=self._global_rank, world_size=world_size, local_size=sharding_group_size,
            use_inter_host_allreduce=False)
        self._remap_sharding_plan(plan=plan, rank=self._global_rank, step=world_size // sharding_group_size,
                                  sharding_group_size=sharding_group_size, use_inter_host_allreduce=False)
        # Step 3: DMP inside the sharding group, then the tensors sync() averages.
        env = ShardingEnv2D(global_pg=global_pg, sharding_pg=ctx.sharding_pg, replica_pg=ctx.replica_pg,
                            device_mesh=ctx.device_mesh, use_inter_host_allreduce=False,
                            sharding_strategy=ShardingStrategy.DEFAULT)
        DistributedModelParallel.__init__(self, module, env, device, plan, sharders)
        self._group_sharded_modules(self._ctxs)
        self._cache_sync_tensors(self._ctxs)

    def _remap_sharding_plan(self, plan: ShardingPlan, *args: Any, **kwargs: Any) -> None:
        """TorchRec's remap, then CPU placements: it writes `rank:R/cpu:R%L`, which TorchRec's
        own CPU shards (device `cpu`) then fail to match ("Local shard tensor device does not
        match"); a CPU placement names no index."""
        super()._remap_sharding_plan(plan, *args, **kwargs)
        if self._device.type != "cpu":
            return
        for module_plan in plan.plan.values():
            for sharding in module_plan.values():
                for shard in getattr(sharding.sharding_spec, "shards", None) or ():
                    rank = shard.placement.rank()
                    shard.placement = ShardMetadata(shard.shard_offsets, shard.shard_sizes, f"rank:{rank}/cpu").placement

    def _average_over_replicas(self, tensors: list[torch.Tensor]) -> None:
        """sync()'s all-reduce (AVG) as gloo can run it: one flat SUM, then divide."""
        group = self._default_ctx.replica_pg
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        dist.all_reduce(flat, group=group)
        flat /= dist.get_world_size(group)
        offset = 0
        for t in tensors:
            t.detach().copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


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
