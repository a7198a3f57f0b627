"""What the cost model knows about the built-in intra-host shardings (a MODEL of TorchRec's).

The runtime's `dmt_fx.runtime.shardings` places a host's tables on its ranks; the compiler
may not import the runtime, so this file restates, per sharding name, the arithmetic plan
"auto" needs: each rank's table memory, the embedding rows it reads, and the bytes it sends
inside the host per step. Read from the runtime's files and TorchRec 1.8's sharding types:

* table_wise: each table whole on one rank, largest (rows x dim) first onto the least
  loaded rank (the runtime's exact rule). A rank sends the ids of the tables it does not
  hold, the pooled rows of its own tables for the other ranks' samples (forward) and the
  gradients of the other ranks' tables for its samples (backward).
* row_wise: every table's rows split evenly over the ranks; ids go to the rank holding the
  row (lengths to every rank); pooled partial sums are reduce-scattered: a rank sends
  (L - 1) x its samples x the tower's width each way (L x table-wise's pooled bytes).
* column_wise: a table whose dim splits into L shards of a multiple of 4 columns is split by
  columns (every rank gets every id, sends a 1/L-wide slice of the pooled rows); any other
  table stays whole on the host's first rank (the runtime's rule).

A sharding registered only in the runtime is unknown here and never chosen by plan="auto".
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

from dmt_fx.cost.wire import EMBEDDING_BYTES, kjt_bytes


@dataclasses.dataclass(frozen=True)
class TableLoad:
    """One table of a tower, as the cost model sees it."""

    name: str
    rows: int
    dim: int
    dtype_bytes: int
    features: int  # features reading it (one KJT key each)
    ids_per_sample: float  # summed pooling factor of those features

    @property
    def memory_bytes(self) -> int:
        return self.rows * self.dim * self.dtype_bytes


@dataclasses.dataclass(frozen=True)
class HostLoad:
    """Per rank of the host: table memory, embedding-row bytes read, bytes sent in the host."""

    memory: tuple[int, ...]
    row_bytes: tuple[float, ...]
    sent: tuple[float, ...]


ShardingModel = Callable[[Sequence[TableLoad], int, float], HostLoad]


def _row_bytes(table: TableLoad, samples: float) -> float:
    return samples * table.ids_per_sample * table.dim * table.dtype_bytes


def _ids(tables: Sequence[TableLoad], samples: float) -> float:
    return kjt_bytes(samples, sum(t.features for t in tables), samples * sum(t.ids_per_sample for t in tables))


def table_wise_slots(tables: Sequence[TableLoad], ranks: int) -> list[list[TableLoad]]:
    """The runtime's table_wise rule: largest (rows x dim) first onto the least loaded rank."""
    load, slots = [0] * ranks, [[] for _ in range(ranks)]
    for table in sorted(tables, key=lambda t: -t.rows * t.dim):
        slot = min(range(ranks), key=lambda i: (load[i], i))
        load[slot] += table.rows * table.dim
        slots[slot].append(table)
    return slots


def _whole_tables(slots: list[list[TableLoad]], tables: Sequence[TableLoad], samples: float) -> HostLoad:
    """Tables whole on the ranks of `slots`: TorchRec's table-wise all-to-alls inside the host."""
    ranks = len(slots)
    width = sum(t.dim * t.features for t in tables)
    sent = []
    for own in slots:
        own_width = sum(t.dim * t.features for t in own)
        mine = {t.name for t in own}  # names are unique: `t not in own` compared dataclasses, O(n^2) a host
        others = [t for t in tables if t.name not in mine]
        pooled = samples * EMBEDDING_BYTES * (own_width * (ranks - 1) + (width - own_width))
        sent.append((_ids(others, samples) + pooled) if ranks > 1 else 0.0)
    return HostLoad(tuple(sum(t.memory_bytes for t in s) for s in slots),
                    tuple(sum(_row_bytes(t, samples) for t in s) for s in slots), tuple(sent))


def table_wise(tables: Sequence[TableLoad], ranks: int, samples: float) -> HostLoad:
    return _whole_tables(table_wise_slots(tables, ranks), tables, samples)


def row_wise(tables: Sequence[TableLoad], ranks: int, samples: float) -> HostLoad:
    memory = sum(math.ceil(t.rows / ranks) * t.dim * t.dtype_bytes for t in tables)
    rows = sum(_row_bytes(t, samples) for t in tables) / ranks
    width = sum(t.dim * t.features for t in tables)
    lengths = kjt_bytes(samples, sum(t.features for t in tables), 0)
    ids = _ids(tables, samples) - lengths
    sent = (lengths * (ranks - 1) + ids * (ranks - 1) / ranks
            + 2 * (ranks - 1) * samples * width * EMBEDDING_BYTES) if ranks > 1 else 0.0
    return HostLoad((memory,) * ranks, (rows,) * ranks, (sent,) * ranks)


def column_splits(dim: int, ranks: int) -> bool:
    """The runtime's rule: split only into shards of a multiple of 4 columns."""
    return dim % ranks == 0 and (dim // ranks) % 4 == 0


def column_wise(tables: Sequence[TableLoad], ranks: int, samples: float) -> HostLoad:
    split = [t for t in tables if column_splits(t.dim, ranks)]
    kept = [t for t in tables if t not in split]  # whole on the host's first rank
    whole = _whole_tables([kept] + [[] for _ in range(ranks - 1)], kept, samples)
    width = sum(t.dim * t.features for t in split)
    # every rank gets every id of a split table, and sends a 1/L slice of its pooled rows each way
    sent = (_ids(split, samples) * (ranks - 1) + 2 * samples * width * EMBEDDING_BYTES * (ranks - 1) / ranks
            if ranks > 1 and split else 0.0)
    share = sum(t.memory_bytes for t in split) // ranks
    rows = sum(_row_bytes(t, samples) for t in split) / ranks
    return HostLoad(tuple(m + share for m in whole.memory), tuple(b + rows for b in whole.row_bytes),
                    tuple(s + sent for s in whole.sent))


SHARDING_MODELS: dict[str, ShardingModel] = {
    "table_wise": table_wise,
    "row_wise": row_wise,
    "column_wise": column_wise,
}
