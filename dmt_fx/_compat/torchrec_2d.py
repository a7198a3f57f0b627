"""TorchRec 2D sparse parallelism (`DMPCollection`) on CPU / gloo: a subclass that reruns its
__init__ without the CUDA guard, and so reads and calls DMPCollection's private members.

Why a subclass: torchrec 1.8's `DMPCollection.__init__` opens with
`assert device.type == "cuda" or device.type == "mtia"` (torchrec/distributed/model_parallel.py,
class DMPCollection, first line of __init__). That is a guard, not a kernel dependency: the
process groups come from a `DeviceMesh` of any device type, the sharding is DMP's, and the
weight sync is an all-reduce. `CpuDMPCollection.__init__` runs the same steps for the
default context (process groups, plan remap, ShardingEnv2D, DMP init, sync tensor cache)
without that line; submodule configs and sharded relay (NCCL-only) are left out. The sync
all-reduce uses ReduceOp.AVG, which gloo does not implement, so the sync is given TorchRec's
own hook (`custom_all_reduce`): SUM over the replica group, then divide.

Checked on torchrec 1.8.0: the private members it sets (`_device`, `_pg`, `_global_rank`,
`_custom_all_reduce`, `_sharder_map`, `_default_ctx`, `_submodule_ctxs`, `_ctxs`,
`_use_sharded_relay`, `_sharded_relay_state`) and calls (`_create_process_groups`,
`_remap_sharding_plan`, `_group_sharded_modules`, `_cache_sync_tensors`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torchrec.distributed.model_parallel import DistributedModelParallel, DMPCollection, DMPCollectionContext
from torchrec.distributed.types import ShardingEnv2D, ShardingPlan, ShardingStrategy, ShardMetadata

__all__ = ["GUARD", "CpuDMPCollection"]

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
        self._submodule_ctxs: list[DMPCollectionContext] = []
        self._default_ctx, self._ctxs = ctx, [ctx]
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
