"""Row-wise: every table's rows split evenly over all the ranks of the host."""

from __future__ import annotations

from typing import Sequence

from torchrec.distributed.sharding_plan import ParameterShardingGenerator, table_row_wise
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from dmt_fx.runtime.shardings.base import HostRanks, register_sharding


def row_wise_sharding(tables: Sequence[EmbeddingBagConfig], host: HostRanks) -> dict[str, ParameterShardingGenerator]:
    # TorchRec's row-wise inside one host of the world is its table-row-wise on that host.
    return {config.name: table_row_wise(host_index=host.host) for config in tables}


register_sharding("row_wise", row_wise_sharding)
