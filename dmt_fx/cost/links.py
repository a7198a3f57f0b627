"""Link tiers of the cost model: what a message, a collective and a byte cost on each tier.

A tier's time for some traffic is

    alpha_s x messages + alpha_collective_s x collectives + bytes / beta_Bps

A `Topology`'s link fields give alpha per message and beta (`tiers_of`); the probe's latency
mode measures alpha per collective (an all-to-all of one group, whatever its size), which
`per_collective` states in the same terms; the extrapolation on a measured latency model
uses both (a collective's start plus one alpha per peer it sends to).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Union

from dmt_fx.ir.topology import Topology

__all__ = ["Links", "Tier", "TierLoad", "Tiers", "per_collective", "tiers_from", "tiers_of"]


@dataclasses.dataclass(frozen=True)
class TierLoad:
    """What a rank sends on one tier in one step."""

    messages: float = 0.0
    bytes: float = 0.0
    collectives: float = 0.0


@dataclasses.dataclass(frozen=True)
class Tier:
    """One link tier: alpha (seconds per message), beta (bytes per second) and alpha per
    collective call (seconds, 0 unless measured)."""

    alpha_s: float
    beta_Bps: float
    alpha_collective_s: float = 0.0

    def time(self, messages: float, nbytes: float, collectives: float = 0.0) -> float:
        seconds = self.alpha_s * messages + (nbytes / self.beta_Bps if nbytes else 0.0)
        if self.alpha_collective_s:  # only a measured per-collective alpha adds a term
            seconds += self.alpha_collective_s * collectives
        return seconds

    def of(self, load: TierLoad) -> float:
        return self.time(load.messages, load.bytes, load.collectives)

    def to_dict(self) -> dict[str, float]:
        out = {"alpha_s": self.alpha_s, "beta_Bps": self.beta_Bps}
        if self.alpha_collective_s:
            out["alpha_collective_s"] = self.alpha_collective_s
        return out


@dataclasses.dataclass(frozen=True)
class Tiers:
    intra: Tier
    inter: Tier

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {"intra": self.intra.to_dict(), "inter": self.inter.to_dict()}


Links = Union[Tiers, Topology]


def tiers_of(links: Links) -> Tiers:
    """The tiers of a Topology's link fields (GB/s and us), or `links` if already Tiers."""
    if isinstance(links, Tiers):
        return links
    return Tiers(intra=Tier(links.intra_host_latency_us / 1e6, links.intra_host_bandwidth_gbps * 1e9),
                 inter=Tier(links.inter_host_latency_us / 1e6, links.inter_host_bandwidth_gbps * 1e9))


def per_collective(tiers: Tiers) -> Tiers:
    """The same alphas charged once per collective instead of once per message."""
    def one(tier: Tier) -> Tier:
        return Tier(0.0, tier.beta_Bps, tier.alpha_s + tier.alpha_collective_s)
    return Tiers(one(tiers.intra), one(tiers.inter))


_INTRA_BETA = ("intra_host_bandwidth_bytes_per_s", "intra_host_Bps", "intra_Bps", "intra_bytes_per_s",
               "intra_bandwidth_Bps", "intra_beta_Bps")
_INTRA_ALPHA = ("intra_host_alpha_s", "intra_alpha_s", "intra_latency_s")
_INTER_BETA = ("inter_host_rate_bytes_per_s", "inter_host_rate_bytes_per_s_per_rank", "inter_host_Bps", "inter_Bps",
               "cross_host_Bps", "inter_bytes_per_s", "inter_bandwidth_Bps", "inter_beta_Bps",
               "cross_host_bytes_per_s")
_INTER_ALPHA = ("inter_host_alpha_s", "inter_alpha_s", "cross_host_alpha_s", "inter_latency_s",
                "cross_host_latency_s")


def tier_from(data: Mapping[str, Any]) -> Tier:
    """A Tier from its dict ({"alpha_s", "beta_Bps"[, "alpha_collective_s"]}; alpha defaults to 0)."""
    return Tier(float(data.get("alpha_s", 0.0)), float(data["beta_Bps"]), float(data.get("alpha_collective_s", 0.0)))


def tiers_from(*sources: Mapping[str, Any]) -> Tiers | None:
    """Tiers from measured rates in the first source that has them: either
    {"tiers": {"intra": {"alpha_s", "beta_Bps"}, "inter": {...}}} or flat keys such as
    intra_host_Bps / intra_alpha_s and inter_host_Bps / inter_alpha_s (alpha defaults to 0
    when only bandwidths are given). None if no source has both bandwidths."""
    for src in sources:
        if not isinstance(src, Mapping):
            continue
        if isinstance(src.get("network"), Mapping):  # dmt_fx.bench.emulated's report: rates under "network"
            found = tiers_from(src["network"])
            if found is not None:
                return found
        nested = src.get("tiers")
        if isinstance(nested, Mapping) and "intra" in nested and "inter" in nested:
            return Tiers(tier_from(nested["intra"]), tier_from(nested["inter"]))

        def first(keys, src=src):
            return next((float(src[k]) for k in keys if src.get(k) is not None), None)
        intra_b, inter_b = first(_INTRA_BETA), first(_INTER_BETA)
        if intra_b and inter_b and not math.isinf(intra_b + inter_b):
            return Tiers(Tier(first(_INTRA_ALPHA) or 0.0, intra_b), Tier(first(_INTER_ALPHA) or 0.0, inter_b))
    return None
