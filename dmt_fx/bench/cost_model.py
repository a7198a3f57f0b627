"""The cost model as the benches name it: `dmt_fx.cost` re-exported, and `analytic_traffic`
by variant name (`flat-table_wise`, `dmt-identity`, `dmt-c4`, each [+fp16|+bf16]), the one
place a variant name becomes the cost model's layout, compression and precision.

The model, its assumptions and its parameters are documented in `dmt_fx.cost.steptime`.
"""

from __future__ import annotations

from typing import Any

from dmt_fx.bench.variants import DMT, parse
from dmt_fx.cost import traffic
from dmt_fx.cost.links import Links, Tier, Tiers, tiers_from, tiers_of
from dmt_fx.cost.measure import measure_compute
from dmt_fx.cost.steptime import breakdown, predict

__all__ = ["Links", "Tier", "Tiers", "analytic_traffic", "breakdown", "layout_of", "measure_compute", "predict",
           "tiers_from", "tiers_of"]


def layout_of(variant: str) -> tuple[str | None, int | None, str]:
    """(layout, compression or None: the caller's, precision) of a variant name; layout None
    when the cost model has no formula for it."""
    typed = parse(variant)
    if typed.base == traffic.FLAT_TABLE_WISE:
        return traffic.FLAT_TABLE_WISE, None, typed.precision
    if typed.family == DMT:
        return traffic.DMT, typed.compression if typed.kind == "linear" else None, typed.precision
    return None, None, typed.precision


def analytic_traffic(variant: str, hosts: int, ranks_per_host: int, *, compression: int = 1,
                     **kw: Any) -> dict[str, float]:
    """`dmt_fx.cost.traffic.analytic_traffic` for a variant name: "flat-table_wise",
    "dmt-identity" / "dmt-c<c>" (or "dmt" with compression=c), each [+fp16|+bf16] (qcomms:
    the pooled embeddings in 2 bytes per element both ways)."""
    layout, own, precision = layout_of(variant)
    if layout is None:
        raise ValueError(f"no analytic traffic for variant {variant!r} (flat-table_wise, dmt-identity, dmt-c<c>, "
                         "each [+fp16|+bf16])")
    return traffic.analytic_traffic(layout, hosts, ranks_per_host, compression=own or compression,
                                    precision=precision, **kw)
