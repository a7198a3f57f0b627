"""The ``flat-grid_shard`` baseline: TorchRec grid sharding under DMP over the whole world.

ShardingType.GRID_SHARD cuts a table column-wise into one block per host and each block
row-wise over the ranks of its host (table-row-wise per column block): every host holds
a slice of every embedding vector, so a lookup's ids go to every host and each host
returns a partial-width embedding.

TorchRec's own `grid_shard(host_indexes)` generator sizes the column blocks from
MIN_CW_DIM (128): a table of dim <= 128 gets one block only, and its generator then indexes
past the shard list when it is given several hosts. Here the blocks are dim / H wide (a
multiple of 4, as FBGEMM needs), built with TorchRec's public
`calculate_shard_sizes_and_offsets(..., "grid_shard", col_wise_shard_dim)`; a table whose dim
does not split so stays whole on the least loaded host (grid with one block, i.e.
table-row-wise), which the plan records. FUSED kernels, as the other flat baselines.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch.nn as nn
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.sharding_plan import (
    calculate_shard_sizes_and_offsets,
    construct_module_sharding_plan,
    placement,
    table_row_wise,
)
from torchrec.distributed.types import (
    EnumerableShardingSpec,
    ParameterSharding,
    ShardingPlan,
    ShardingType,
    ShardMetadata,
)
from torchrec.optim.keyed import CombinedOptimizer

from dmt_fx.baselines import dmp
from dmt_fx.baselines.registry import FLAT, register_baseline
from dmt_fx.ir.plan import TowerPlan
from dmt_fx.ir.topology import Topology

__all__ = ["build_grid", "grid_over_hosts", "grid_sharding_plan"]

FBGEMM_DIM_MULTIPLE = 4


def grid_over_hosts(num_hosts: int) -> Any:
    """A `construct_module_sharding_plan` generator: column block h on host h, rows over its ranks."""

    def generator(param: nn.Parameter, local_size: int, world_size: int, device_type: str,
                  sharder: Any) -> ParameterSharding:
        block = param.shape[1] // num_hosts
        sizes, offsets = calculate_shard_sizes_and_offsets(param, world_size, local_size,
                                                           ShardingType.GRID_SHARD.value, col_wise_shard_dim=block)
        # TorchRec orders the shards column block by column block, rows inside: shard i is
        # host i // local_size, local rank i % local_size, i.e. global rank i.
        shards = [ShardMetadata(shard_sizes=size, shard_offsets=offset,
                                placement=placement(device_type, rank, local_size))
                  for rank, (size, offset) in enumerate(zip(sizes, offsets))]
        return ParameterSharding(sharding_type=ShardingType.GRID_SHARD.value, compute_kernel=dmp.FUSED,
                                 ranks=list(range(len(shards))), sharding_spec=EnumerableShardingSpec(shards))
    return generator


def _splits(dim: int, num_hosts: int) -> bool:
    return num_hosts > 1 and dim % (num_hosts * FBGEMM_DIM_MULTIPLE) == 0


def grid_sharding_plan(model: nn.Module, topology: Topology, sharder: EmbeddingBagCollectionSharder) -> ShardingPlan:
    """Grid over all hosts for every table whose dim splits into H blocks of a multiple of 4
    columns; the others table-row-wise on the least loaded host."""
    host_load = [0] * topology.num_hosts
    plan = {}
    for path, ebc in dmp.embedding_collections(model):
        per_table = {}
        for config in ebc.embedding_bag_configs():
            if _splits(config.embedding_dim, topology.num_hosts):
                per_table[config.name] = grid_over_hosts(topology.num_hosts)
                continue
            least = min(range(topology.num_hosts), key=lambda h: (host_load[h], h))
            host_load[least] += config.num_embeddings * config.embedding_dim
            per_table[config.name] = table_row_wise(host_index=least)
        module_plan = construct_module_sharding_plan(
            ebc, per_table, sharder=sharder, local_size=topology.local_world_size,
            world_size=topology.world_size, device_type=dmp.runtime_device().type)
        for parameter_sharding in module_plan.values():
            parameter_sharding.compute_kernel = dmp.FUSED
        plan[path] = module_plan
    return ShardingPlan(plan)


def build_grid(model: nn.Module, *, topology: Topology, optimizer_class: type,
               optimizer_kwargs: Mapping[str, Any], plan: TowerPlan | None = None,
               ) -> tuple[DistributedModelParallel, CombinedOptimizer]:
    """The original model under DMP with the grid plan (the tower plan is not used)."""
    sharder = EmbeddingBagCollectionSharder(fused_params=dmp.fused_params(optimizer_class, optimizer_kwargs))
    sharding_plan = grid_sharding_plan(model, topology, sharder)
    tables = {path: dmp.table_weights(ebc) for path, ebc in dmp.embedding_collections(model)}
    return dmp.shard(model, sharding_plan.plan, sharder, tables, optimizer_class, optimizer_kwargs)


register_baseline("flat-grid_shard", build_grid, family=FLAT)
