"""Column-wise: every table's columns split evenly over the ranks of the host."""

from __future__ import annotations

from typing import Sequence

from torchrec.distributed.sharding_plan import ParameterShardingGenerator, column_wise
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from dmt_fx.runtime.shardings.base import HostRanks, register_sharding


def column_wise_sharding(tables: Sequence[EmbeddingBagConfig], host: HostRanks,
                         ) -> dict[str, ParameterShardingGenerator]:
    out = {}
    for config in tables:
        # A width the host's rank count does not divide into shards of a multiple of 4 columns
        # (FBGEMM's batched tables need that per shard) stays whole, on the host's first rank.
        width, ranks = config.embedding_dim, len(host.ranks)
        fits = width % ranks == 0 and (width // ranks) % 4 == 0
        out[config.name] = column_wise(ranks=list(host.ranks) if fits else [host.ranks[0]])
    return out


register_sharding("column_wise", column_wise_sharding)
