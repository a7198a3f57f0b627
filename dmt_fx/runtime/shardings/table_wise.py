"""Table-wise: each table whole on one rank of the host, largest first onto the least loaded.

The tables come largest first (`host_sharding_plan` sorts them)."""

from __future__ import annotations

from typing import Sequence

from torchrec.distributed.sharding_plan import ParameterShardingGenerator, table_wise
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from dmt_fx.runtime.shardings.base import HostRanks, register_sharding


def table_wise_sharding(tables: Sequence[EmbeddingBagConfig], host: HostRanks) -> dict[str, ParameterShardingGenerator]:
    load = [0] * len(host.ranks)
    out = {}
    for config in tables:
        slot = min(range(len(host.ranks)), key=lambda i: (load[i], i))
        load[slot] += config.num_embeddings * config.embedding_dim
        out[config.name] = table_wise(rank=host.ranks[slot])
    return out


register_sharding("table_wise", table_wise_sharding)
