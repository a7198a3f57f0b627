"""Intra-host shardings: how TorchRec shards one host's tables over the host's ranks.

A sharding is a function `(tables, host) -> {table name: ParameterShardingGenerator}`: for
every table of the host's collection (given largest first), one of TorchRec's generators (`table_wise(rank=)`,
`row_wise()`, `column_wise(ranks=)`, `table_row_wise(host_index=)` from
`torchrec.distributed.sharding_plan`) over the host's *global* ranks (`host.ranks`).
`host_sharding_plan` does the rest for every sharding: it builds TorchRec's plan, asks for
the fused kernel and maps the ranks to ranks of the intra-host group, as TorchRec's own
tower sharding does. Register one with `register_sharding(name, fn)`; `distribute(...,
sharding=name)` and the worker's `--sharding` read the names from `SHARDINGS`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.sharding_plan import ParameterShardingGenerator, construct_module_sharding_plan
from torchrec.distributed.types import EmbeddingModuleShardingPlan, ShardingType
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.registry import Registry
from dmt_fx.ir.topology import Topology
from dmt_fx.runtime.groups import runtime_device
from dmt_fx.runtime.optim import FUSED


@dataclasses.dataclass(frozen=True)
class HostRanks:
    """The host a sharding places tables on: its index and its global ranks (local-rank order)."""

    host: int
    ranks: tuple[int, ...]

    @classmethod
    def of(cls, topology: Topology, host: int) -> HostRanks:
        return cls(host, tuple(topology.intra_host_ranks(host)))


ShardingFn = Callable[[Sequence[EmbeddingBagConfig], HostRanks], Mapping[str, ParameterShardingGenerator]]

SHARDINGS: Registry[ShardingFn] = Registry(
    "intra-host sharding", "dmt_fx.runtime.shardings.register_sharding(name, fn) (a new file in that package)")


def register_sharding(name: str, fn: ShardingFn) -> ShardingFn:
    """Make `fn` available as `distribute(..., sharding=name)` and `--sharding name`.

    Args:
        name: the sharding's name.
        fn: `(tables, host) -> {table name: TorchRec parameter-sharding generator}`; `tables`
            are the host's `EmbeddingBagConfig`s (largest first), `host` a `HostRanks`.

    Returns:
        `fn`, so the function can be used as a decorator.

    Raises:
        DMTError: `name` is not a non-empty string.

    Example:
        >>> from torchrec.distributed.sharding_plan import table_wise
        >>> from dmt_fx.runtime.shardings import SHARDINGS, register_sharding
        >>> _ = register_sharding("last_rank", lambda tables, host: {c.name: table_wise(rank=host.ranks[-1]) for c in tables})
        >>> "last_rank" in SHARDINGS
        True
    """
    return SHARDINGS.register(name, fn)


def host_sharding_plan(ebc: EmbeddingBagCollection, sharding: str, topology: Topology, host: int,
                       sharder: EmbeddingBagCollectionSharder, kernel: str = FUSED) -> EmbeddingModuleShardingPlan:
    """TorchRec's plan for the host's tables over the host's ranks, by the sharding `sharding`,
    on the compute kernel `kernel` (`dmt_fx.runtime.optim.table_kernel`).

    Built with global ranks (ShardedTensor placements need them), then mapped to ranks of the
    intra-host group."""
    # a pooled collection's bag configs, or an unpooled EmbeddingCollection's (runtime/sequence.py)
    tables = ebc.embedding_bag_configs() if hasattr(ebc, "embedding_bag_configs") else ebc.embedding_configs()
    configs = sorted(tables, key=lambda c: -c.num_embeddings * c.embedding_dim)
    per_table = dict(SHARDINGS.get(sharding)(configs, HostRanks.of(topology, host)))
    _check_tables(sharding, per_table, [c.name for c in configs])
    plan = construct_module_sharding_plan(ebc, per_table, sharder=sharder, local_size=topology.local_world_size,
                                          world_size=topology.world_size, device_type=runtime_device().type)
    for parameter_sharding in plan.values():
        parameter_sharding.compute_kernel = kernel
        # A host is its lookup's whole world: row-wise inside one host is plain row-wise there.
        if parameter_sharding.sharding_type == ShardingType.TABLE_ROW_WISE.value:
            parameter_sharding.sharding_type = ShardingType.ROW_WISE.value
        parameter_sharding.ranks = [r % topology.local_world_size for r in parameter_sharding.ranks or []]
    return plan


def _check_tables(sharding: str, per_table: Mapping[str, ParameterShardingGenerator],
                  tables: Sequence[str]) -> None:
    if sorted(per_table) != sorted(tables):
        raise DMTError(f"sharding {sharding!r} placed tables {sorted(per_table)}",
                       f"one placement for each of the host's tables {sorted(tables)}",
                       [f"return a generator for every table from the function registered as {sharding!r}"])
