"""The width rule of FBGEMM's batched tables, shared by the runtime and the cost models.

FBGEMM (under every TorchRec sharded table, on CPU too) needs an embedding dim that is a
multiple of 4. The runtime shards each table at its width rounded up (`padded_dim`) and cuts
the outputs back to the real width before the peer exchange (dmt_fx/runtime/padded.py), so
memory, row reads and the traffic inside the host are at the padded width, and the traffic
across hosts at the real one. The planner and the traffic model count them the same way.
"""

from __future__ import annotations

from typing import Sequence

ALIGN = 4  # FBGEMM's batched tables: dims a multiple of 4


def padded_dim(dim: int) -> int:
    """`dim` rounded up to a multiple of ALIGN: the width a table has inside its host."""
    return -(-dim // ALIGN) * ALIGN


def wire_widths(dims: Sequence[int]) -> tuple[int, int]:
    """(peer exchange, inside the host) pooled width of tables of widths `dims`: the traffic
    model of the padding. The peer exchange carries the real columns; TorchRec's lookup and
    output dist inside the host carry the padded ones (forward and backward alike)."""
    return sum(dims), sum(padded_dim(d) for d in dims)
