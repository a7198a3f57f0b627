"""Flat baselines: the ORIGINAL model under TorchRec's DistributedModelParallel over the whole world.

* ``flat-table_wise``: tables, largest first, onto the least loaded of all N ranks;
* ``flat-row_wise``: every table over all N ranks;
* ``flat-table_row_wise``: every table row-wise over the ranks of one host, tables spread
  over hosts by size;
* ``flat-<sharding>+fp16`` / ``+bf16``: the same with TorchRec's quantized comms for the
  pooled embeddings (qcomms: FP16 forward and BF16 backward, or BF16 both ways;
  `dmt_fx.runtime.qcomms`), the sharder's `qcomm_codecs_registry`. Family "flat" too.

An explicit ShardingPlan (``construct_module_sharding_plan``) for every
EmbeddingBagCollection and every EmbeddingCollection (sequence, unpooled lookups: TorchRec's
`EmbeddingCollectionSharder` beside the bag sharder in DMP's sharder list), FUSED kernels
(see `dmt_fx.baselines.dmp`). This is the flat all-to-all over N ranks that DMT replaces.

Sequence tables: TorchRec's EmbeddingCollectionSharder offers data-parallel, table-wise,
column-wise and row-wise, not table-row-wise. `flat-table_wise` and `flat-row_wise` shard
them as their name says; `flat-table_row_wise` keeps each sequence table inside one host,
split column-wise over the host's ranks (the host's share of the dim a multiple of 4, as
FBGEMM needs), else whole on the host's least loaded rank (table-wise). The qcomms twins
give the same codecs to the sequence all-to-all (`SEQUENCE_EMBEDDINGS_ALL_TO_ALL`).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import torch.nn as nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.sharding_plan import (
    column_wise,
    construct_module_sharding_plan,
    row_wise,
    table_row_wise,
    table_wise,
)
from torchrec.distributed.types import ParameterSharding, ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.optim.keyed import CombinedOptimizer

from dmt_fx.baselines import dmp
from dmt_fx.baselines.registry import FLAT, register_baseline
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.plan import TowerPlan
from dmt_fx.ir.topology import Topology
from dmt_fx.ir.widths import ALIGN  # FBGEMM: a dim (a column shard's too) a multiple of 4
from dmt_fx.runtime.qcomms import FP32, PRECISIONS, qcomm_codecs_registry

SHARDINGS = ("table_wise", "row_wise", "table_row_wise")

__all__ = ["SHARDINGS", "build_flat", "flat_sharding_plan"]


def flat_sharding_plan(model: nn.Module, sharding: str, topology: Topology,
                       sharder: EmbeddingBagCollectionSharder,
                       sequence_sharder: EmbeddingCollectionSharder | None = None) -> ShardingPlan:
    """TorchRec ShardingPlan over the whole world for every collection of `model`.

    `sharding`: "table_wise" (largest table first onto the least loaded rank, over all N
    ranks and all collections), "row_wise" (every table over all N ranks) or
    "table_row_wise" (every table row-wise inside one host; largest table first onto the
    least loaded host; sequence tables column-wise inside it, see the module docstring).
    Kernels are FUSED. `sequence_sharder` plans the EmbeddingCollections (default: one with
    `sharder`'s fused params and codecs)."""
    if sharding not in SHARDINGS:
        raise DMTError(f"flat sharding {sharding!r}", f"one of {', '.join(SHARDINGS)}",
                       [f"pick one of {', '.join(SHARDINGS)}"])
    sequence_sharder = sequence_sharder or sequence_sharder_like(sharder)
    # Loads are shared by all collections: a second collection fills the emptiest ranks.
    rank_load, host_load = [0] * topology.world_size, [0] * topology.num_hosts
    plan = {}
    for path, collection in dmp.sharded_collections(model):
        if isinstance(collection, EmbeddingCollection):
            configs, module_sharder = collection.embedding_configs(), sequence_sharder
            per_table = {c.name: _place_sequence(c, sharding, topology, rank_load, host_load) for c in _by_size(configs)}
        else:
            configs, module_sharder = collection.embedding_bag_configs(), sharder
            per_table = {c.name: _place(c, sharding, rank_load, host_load) for c in _by_size(configs)}
        _check_widths(path, configs)
        module_plan = construct_module_sharding_plan(
            collection, per_table, sharder=module_sharder, local_size=topology.local_world_size,
            world_size=topology.world_size, device_type=dmp.runtime_device().type)
        for parameter_sharding in module_plan.values():
            parameter_sharding.compute_kernel = dmp.FUSED  # table_row_wise() takes no kernel
        plan[path] = module_plan
    return ShardingPlan(plan)


def _check_widths(path: str, configs: list) -> None:
    """TorchRec's sharded tables need a dim that is a multiple of 4 (FBGEMM), else an
    assertion deep inside DMP; DMT pads such tables itself (docs/widths.md), flat cannot."""
    odd = [f"{c.name} ({c.embedding_dim})" for c in configs if c.embedding_dim % ALIGN]
    if odd:
        raise DMTError(f"tables of {path or 'the model'} whose width is not a multiple of {ALIGN}: {', '.join(odd)}",
                       f"widths that are multiples of {ALIGN} under TorchRec's DMP (FBGEMM's batched tables)",
                       [f"widen those tables to a multiple of {ALIGN} for the flat baselines",
                        "DMT (distribute) pads them inside its sharded tables and runs them as they are"])


def sequence_sharder_like(sharder: EmbeddingBagCollectionSharder) -> EmbeddingCollectionSharder:
    """TorchRec's EmbeddingCollection sharder with the bag sharder's fused optimizer and codecs."""
    return EmbeddingCollectionSharder(fused_params=sharder.fused_params,
                                      qcomm_codecs_registry=sharder.qcomm_codecs_registry)


def _by_size(configs: list) -> list:
    return sorted(configs, key=lambda c: (-c.num_embeddings * c.embedding_dim, c.name))


def _place(config: Any, sharding: str, rank_load: list[int], host_load: list[int]) -> ParameterSharding:
    size = config.num_embeddings * config.embedding_dim
    if sharding == "row_wise":
        return row_wise(compute_kernel=dmp.FUSED)
    load = rank_load if sharding == "table_wise" else host_load
    least = min(range(len(load)), key=lambda i: (load[i], i))
    load[least] += size
    if sharding == "table_wise":
        return table_wise(rank=least, compute_kernel=dmp.FUSED)
    return table_row_wise(host_index=least)


def _place_sequence(config: Any, sharding: str, topology: Topology, rank_load: list[int],
                    host_load: list[int]) -> ParameterSharding:
    """A sequence table's sharding: table_row_wise has no EmbeddingCollection sharding in
    TorchRec, so the table stays in the least loaded host, column-wise over its ranks."""
    if sharding != "table_row_wise":
        return _place(config, sharding, rank_load, host_load)
    size = config.num_embeddings * config.embedding_dim
    host = min(range(topology.num_hosts), key=lambda h: (host_load[h], h))
    host_load[host] += size
    ranks = topology.intra_host_ranks(host)
    if config.embedding_dim % (len(ranks) * ALIGN) == 0:
        return column_wise(ranks=ranks, compute_kernel=dmp.FUSED)
    rank = min(ranks, key=lambda r: (rank_load[r], r))
    rank_load[rank] += size
    return table_wise(rank=rank, compute_kernel=dmp.FUSED)


def build_flat(sharding: str, model: nn.Module, *, topology: Topology, optimizer_class: type,
               optimizer_kwargs: Mapping[str, Any], plan: TowerPlan | None = None, comm_precision: str = FP32,
               ) -> tuple[DistributedModelParallel, CombinedOptimizer]:
    """The flat baseline `sharding` (the tower plan is not used: flat has no towers);
    `comm_precision` the pooled and sequence embeddings' wire precision (`dmt_fx.runtime.qcomms`)."""
    sharder = EmbeddingBagCollectionSharder(fused_params=dmp.fused_params(optimizer_class, optimizer_kwargs),
                                            qcomm_codecs_registry=qcomm_codecs_registry(comm_precision))
    sequence_sharder = sequence_sharder_like(sharder)
    sharding_plan = flat_sharding_plan(model, sharding, topology, sharder, sequence_sharder)
    tables = {path: dmp.table_weights(c) for path, c in dmp.sharded_collections(model)}
    return dmp.shard(model, sharding_plan.plan, [sharder, sequence_sharder], tables, optimizer_class,
                     optimizer_kwargs)


for _sharding in SHARDINGS:
    register_baseline(f"flat-{_sharding}", functools.partial(build_flat, _sharding), family=FLAT)
for _precision in (p for p in PRECISIONS if p != FP32):  # after every fp32 plan: their order stays
    for _sharding in SHARDINGS:
        register_baseline(f"flat-{_sharding}+{_precision}",
                          functools.partial(build_flat, _sharding, comm_precision=_precision), family=FLAT)
