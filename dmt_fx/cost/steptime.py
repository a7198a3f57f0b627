"""The one step-time model (a MODEL, not a measurement): plan="auto", the benches, the sweep's
fit and the extrapolations all time a step with `step_terms`.

Per rank and step (forward + backward), with no overlap:

    t_rank = kappa_compute x (t_compute + t_lookup + t_tower_module)
             + T_intra(sparse exchanges) + kappa_inter x T_inter(sparse exchanges)
             + T_inter(dense all-reduce) + T_intra(dense all-reduce)
             + overhead_per_collective x collective calls

with T_tier = alpha x messages + alpha_collective x collectives + bytes / beta
(`dmt_fx.cost.links.Tier`), and the step takes as long as its busiest rank. t_compute is
measured or given; t_lookup is the embedding rows the rank reads and writes (forward read,
backward read + write: 3 x) at `memory_bandwidth_gbps`; t_tower_module a compressing tower
module's multiply-adds (forward + backward: 3 x 2 flops each) at `flops_tflops`. Both
hardware figures default to an H100's order of magnitude (effective, not peak).

The parameters (`dmt_fx.cost.params.CostParams`) default to the model at face value
(kappas 1, no overhead, the Topology's links); a sweep fits them (`dmt_fx.cost.sweep`).

`breakdown` / `predict` time a traffic record (what `dmt-fx bench traffic` measures, or
`dmt_fx.cost.traffic.analytic_traffic` derives) with the same function. Their assumptions:
every message pays the tier's alpha once, serially (`alpha_per="message"`, pessimistic for
runtimes that post a collective's messages at once; `alpha_per="collective"`, one alpha per
collective that touches the tier, is the optimistic bound); a rank's bytes on a tier go
through one link of bandwidth beta; ranks are symmetric (the per-rank mean traffic).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from dmt_fx.cost.links import Links, TierLoad, Tiers, per_collective, tiers_of
from dmt_fx.cost.params import DEFAULT_PARAMS, CostParams

__all__ = ["FLOPS_TFLOPS", "MEMORY_BANDWIDTH_GBPS", "Hardware", "StepLoad", "breakdown", "cross_bytes",
           "predict", "record_load", "step_terms"]

MEMORY_BANDWIDTH_GBPS = 2000.0  # effective HBM bandwidth of a rank for embedding rows
FLOPS_TFLOPS = 100.0  # effective dense fp32/tf32 throughput of a rank for tower modules
_NONE = TierLoad()


@dataclasses.dataclass(frozen=True)
class Hardware:
    """What one rank computes at: embedding-row bandwidth and dense throughput."""

    memory_bandwidth_gbps: float = MEMORY_BANDWIDTH_GBPS
    flops_tflops: float = FLOPS_TFLOPS
    compute_s: float = 0.0  # the model's dense step, the same for every candidate

    def lookup_s(self, row_bytes: float) -> float:
        return 3 * row_bytes / (self.memory_bandwidth_gbps * 1e9)

    def tower_s(self, macs: float) -> float:
        return 3 * 2 * macs / (self.flops_tflops * 1e12)


@dataclasses.dataclass(frozen=True)
class StepLoad:
    """What one rank does in a step: its terms add up to its time."""

    compute_s: float = 0.0  # measured or given compute (the dense step)
    lookup_row_bytes: float = 0.0
    tower_macs: float = 0.0
    intra: TierLoad = _NONE  # the sparse exchanges inside the host
    cross: TierLoad = _NONE  # ... and across hosts
    dense_intra: TierLoad = _NONE  # the dense all-reduce's share on each tier
    dense_cross: TierLoad = _NONE
    collectives: float = 0.0  # collective calls per step (the fitted overhead counts them)


def step_terms(load: StepLoad, tiers: Tiers, hardware: Hardware = Hardware(),
               params: CostParams = DEFAULT_PARAMS) -> dict[str, float]:
    """Seconds per term of the one model, and their total (see the module doc)."""
    kappa = params.kappa_compute
    out = {"compute": kappa * load.compute_s, "lookup": kappa * hardware.lookup_s(load.lookup_row_bytes),
           "tower_module": kappa * hardware.tower_s(load.tower_macs),
           "intra": tiers.intra.of(load.intra), "cross": params.kappa_inter * tiers.inter.of(load.cross),
           "dense": tiers.inter.of(load.dense_cross) + tiers.intra.of(load.dense_intra),
           "overhead": params.overhead_per_collective_s * load.collectives}
    out["total"] = sum(out.values())
    return out


# ---------------------------------------------------------------- traffic records


def cross_bytes(record: Mapping[str, Any]) -> float:
    """A record's cross-host bytes: its id and embedding split when it has one."""
    if "cross_host_id_bytes" in record or "cross_host_embedding_bytes" in record:
        return float(record.get("cross_host_id_bytes", 0.0)) + float(record.get("cross_host_embedding_bytes", 0.0))
    return float(record.get("cross_host_bytes", 0.0))


def _shape(record: Mapping[str, Any]) -> tuple[int, int]:
    if "hosts" in record and "ranks" in record:
        return int(record["hosts"]), int(record["ranks"])
    h, l = (int(x) for x in str(record.get("topology", "1x1")).lower().split("x"))
    return h, h * l


def record_load(record: Mapping[str, Any], t_compute_s: float | None = None, *,
                include_dense: bool = False) -> StepLoad:
    """A traffic record as a StepLoad. `t_compute_s` defaults to record["t_compute_s"] (else 0).

    include_dense: DDP's dense gradient all-reduce as a ring, from the measured
    record["dense_allreduce_bytes"] (bytes one rank sends; else the older
    record["dense_allreduce_bytes_estimate"]) and record["dense_allreduce_messages"]
    (ring steps; default 2 (N - 1) with N = record["ranks"]): the ring runs at the speed
    of its slowest hop, the inter-host one when there are hosts >= 2 (record["hosts"],
    else parsed from record["topology"])."""
    def tier(name: str, nbytes: float) -> TierLoad:
        return TierLoad(float(record.get(f"{name}_messages", 0.0)), nbytes,
                        float(record.get(f"{name}_collectives", 0.0)))
    ring, hosts = _NONE, 1
    if include_dense:
        nbytes = float(record.get("dense_allreduce_bytes", record.get("dense_allreduce_bytes_estimate", 0.0)))
        hosts, ranks = _shape(record)
        steps = float(record.get("dense_allreduce_messages", 2 * (ranks - 1)))
        ring = TierLoad(steps, nbytes, steps)  # a ring step is one message and one call, whichever alpha applies
    compute = float(t_compute_s if t_compute_s is not None else record.get("t_compute_s", 0.0))
    return StepLoad(compute, intra=tier("intra_host", float(record.get("intra_host_bytes", 0.0))),
                    cross=tier("cross_host", cross_bytes(record)),  # the ring runs at its slowest hop's speed
                    dense_intra=ring if hosts == 1 else _NONE, dense_cross=ring if hosts > 1 else _NONE)


def breakdown(record: Mapping[str, Any], links: Links, t_compute_s: float | None = None, *,
              include_dense: bool = False, alpha_per: str = "message") -> dict[str, float]:
    """A traffic record's step time by term, in seconds: compute, intra_alpha, intra_beta,
    inter_alpha, inter_beta, dense, total (`record_load` for the arguments). `links`: Tiers,
    or a Topology whose link fields give them; alpha_per: "message" or "collective"."""
    if alpha_per not in ("message", "collective"):
        raise ValueError(f"alpha_per={alpha_per!r}: 'message' or 'collective'")
    tiers = tiers_of(links) if alpha_per == "message" else per_collective(tiers_of(links))
    load = record_load(record, t_compute_s, include_dense=include_dense)
    terms = step_terms(load, tiers)
    out = {"compute": terms["compute"]}
    for name, tier, part in (("intra", tiers.intra, load.intra), ("inter", tiers.inter, load.cross)):
        beta = tier.time(0.0, part.bytes)
        out[f"{name}_alpha"], out[f"{name}_beta"] = tier.time(part.messages, 0.0, part.collectives), beta
    return {**out, "dense": terms["dense"], "total": terms["total"]}


def predict(record: Mapping[str, Any], links: Links, t_compute_s: float | None = None, *,
            include_dense: bool = False, alpha_per: str = "message") -> float:
    """Predicted step time in seconds of a traffic record (see `breakdown`)."""
    return breakdown(record, links, t_compute_s, include_dense=include_dense, alpha_per=alpha_per)["total"]
