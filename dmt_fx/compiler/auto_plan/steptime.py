"""The alpha-beta step-time arithmetic that plan="auto" ranks candidates by (a MODEL).

Link tiers (`Tier`, `Tiers`, `tiers_of`) are the cost model's (`dmt_fx.bench.cost_model`
re-exports them from here): the compiler may not import `dmt_fx.bench`, whose traffic and
emulation modules import the runtime, so the pure arithmetic lives on this side.

Per rank and step (forward + backward), with no overlap (as `dmt_fx.bench.cost_model`):

    t_rank = t_compute + t_lookup + t_tower_module
             + alpha_intra x intra messages + intra bytes / beta_intra
             + alpha_inter x cross messages + cross bytes / beta_inter

and the step takes as long as its busiest rank. t_lookup is the embedding rows the rank
reads and writes (forward read, backward read + write: 3 x) at `memory_bandwidth_gbps`;
t_tower_module is a compressing tower module's multiply-adds (forward + backward: 3 x 2
flops each) at `flops_tflops`. Both hardware figures default to an H100's order of
magnitude (effective, not peak); the dense all-reduce is the same for every candidate and
left out (tower modules' own parameters aside).
"""

from __future__ import annotations

import dataclasses

from dmt_fx.ir.topology import Topology

# The byte model of dmt_fx.bench.bytes (one owner there; tests/test_auto_plan.py holds these to it).
ID_BYTES = 8  # int64 KJT values
LENGTH_BYTES = 8  # int64 KJT lengths, one per sample and feature
EMBEDDING_BYTES = 4  # fp32 pooled embeddings and their gradients
SPLIT_BYTES = 8  # int64 split sizes of KJTAllToAll's handshake
ID_COLLECTIVES = 3  # KJTAllToAll: handshake, lengths, values
EMBEDDING_COLLECTIVES = 2  # pooled all-to-all forward, its gradient backward
# The runtime's peer id exchange (dmt_fx.runtime.peer_ids): lengths with static splits and
# values, one all-to-all each for every collection at once, no split handshake; per-sample
# weights ride a third.
PEER_ID_COLLECTIVES = 2
WEIGHT_BYTES = 4  # fp32 per-id weights

MEMORY_BANDWIDTH_GBPS = 2000.0  # effective HBM bandwidth of a rank for embedding rows
FLOPS_TFLOPS = 100.0  # effective dense fp32/tf32 throughput of a rank for tower modules


@dataclasses.dataclass(frozen=True)
class Tier:
    """One link tier: alpha (seconds per message) and beta (bytes per second)."""

    alpha_s: float
    beta_Bps: float

    def time(self, messages: float, nbytes: float) -> float:
        return self.alpha_s * messages + (nbytes / self.beta_Bps if nbytes else 0.0)


@dataclasses.dataclass(frozen=True)
class Tiers:
    intra: Tier
    inter: Tier

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {"intra": dataclasses.asdict(self.intra), "inter": dataclasses.asdict(self.inter)}


def tiers_of(links: Tiers | Topology) -> Tiers:
    """The tiers of a Topology's link fields (GB/s and us), or `links` if already Tiers."""
    if isinstance(links, Tiers):
        return links
    return Tiers(intra=Tier(links.intra_host_latency_us / 1e6, links.intra_host_bandwidth_gbps * 1e9),
                 inter=Tier(links.inter_host_latency_us / 1e6, links.inter_host_bandwidth_gbps * 1e9))


def kjt_bytes(samples: float, features: float, ids: float) -> float:
    """A KJT's payload: one length per sample and feature, one id per id."""
    return samples * features * LENGTH_BYTES + ids * ID_BYTES


def handshake_bytes() -> int:
    """KJTAllToAll's split sizes to ONE destination: lengths, values and the batch size."""
    return 3 * SPLIT_BYTES


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
class RankLoad:
    """What one rank does in a step: its terms add up to its time."""

    lookup_row_bytes: float = 0.0
    tower_macs: float = 0.0
    intra_messages: float = 0.0
    intra_bytes: float = 0.0
    cross_messages: float = 0.0
    cross_bytes: float = 0.0

    def breakdown(self, tiers: Tiers, hardware: Hardware) -> dict[str, float]:
        """Seconds per term, and their total."""
        out = {"compute": hardware.compute_s, "lookup": hardware.lookup_s(self.lookup_row_bytes),
               "tower_module": hardware.tower_s(self.tower_macs),
               "intra": tiers.intra.time(self.intra_messages, self.intra_bytes),
               "cross": tiers.inter.time(self.cross_messages, self.cross_bytes)}
        out["total"] = sum(out.values())
        return out
