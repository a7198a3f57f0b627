"""One candidate of plan="auto": towers, compression, per-tower sharding, and its predicted cost.

Algorithm (`evaluate`):
  1. each host's tables as the cost model sees them (rows, dim, features, ids per sample): the
     tables of every tower on it (k towers per host share one sharded lookup at run time);
  2. per host with towers, every known sharding (shardings.py) on H x B samples per rank: the
     one whose busiest rank is fastest among those that fit the memory per rank; the host's
     towers all get it (the runtime shards a host's tables one way);
  3. per rank: lookup rows, tower-module work, intra-host bytes (its sharding) and
     cross-host bytes (the peer all-to-alls of DMT.md: ids out, tower outputs back and
     their gradients), timed by the one step model (`dmt_fx.cost.steptime.step_terms`, with
     `AutoOptions.cost_params`); the step takes the busiest rank's time;
  4. the kept affinity of the towers, and a refusal reason when memory or quality fails.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

from dmt_fx.compiler.affinity import within_tower_affinity
from dmt_fx.compiler.auto_plan.shardings import SHARDING_MODELS, HostLoad, TableLoad
from dmt_fx.cost.links import TierLoad, Tiers
from dmt_fx.cost.params import DEFAULT_PARAMS, CostParams
from dmt_fx.cost.steptime import Hardware, StepLoad, step_terms
from dmt_fx.cost.wire import (
    EMBEDDING_BYTES,
    EMBEDDING_COLLECTIVES,
    ID_COLLECTIVES,
    PEER_ID_COLLECTIVES,
    WEIGHT_BYTES,
    handshake_bytes,
    peer_id_bytes,
)
from dmt_fx.ir.sites import ModelSites
from dmt_fx.ir.widths import padded_dim

COLLECTIVES = ID_COLLECTIVES + EMBEDDING_COLLECTIVES  # per step inside a host (TorchRec's all-to-alls)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every candidate of one auto plan shares."""

    sites: ModelSites
    pooling: Mapping[str, float]
    hosts: int
    ranks: int  # per host
    batch: int  # local batch per rank
    tiers: Tiers
    hardware: Hardware
    memory_per_rank: int | None
    quality_budget: float
    affinity: Mapping[tuple[str, str], float] | None
    shardings: tuple[str, ...] = tuple(SHARDING_MODELS)  # the ones a tower may get
    params: CostParams = DEFAULT_PARAMS  # the step model's parameters (AutoOptions.cost_params)

    @functools.cached_property
    def any_weighted(self) -> bool:
        """Some feature has per-sample weights (computed once: cross_load asks per host and candidate)."""
        return any(f.weighted for f in self.sites.features)


@dataclasses.dataclass(frozen=True)
class Candidate:
    towers: int
    compression: int
    tower_module: str
    groups: tuple[tuple[str, ...], ...]
    shardings: tuple[str, ...]  # per tower
    step_s: float
    breakdown: Mapping[str, float]  # the busiest rank's terms, seconds
    busiest_rank: int
    memory_per_rank: int  # table bytes on the busiest rank
    cross_bytes: float  # bytes the busiest rank sends across hosts per step
    kept_affinity: float | None
    refused: str = ""  # why it cannot be chosen ("" when it can)
    towers_per_domain: int = 1  # k: tower t on host t // k
    tower_hosts: tuple[int, ...] = ()  # per tower

    @property
    def label(self) -> str:
        kind = "identity" if self.tower_module == "identity" else f"{self.tower_module} c={self.compression}"
        per = f" ({self.towers_per_domain} per host)" if self.towers_per_domain > 1 else ""
        return (f"{self.towers} tower{'s' if self.towers > 1 else ''}{per}, {kind}, "
                f"{'/'.join(sorted(set(self.shardings)))}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["groups"] = [list(g) for g in self.groups]
        data["breakdown"] = dict(self.breakdown)
        data["label"] = self.label
        return data


def tower_tables(setup: Setup, features: Sequence[str]) -> list[TableLoad]:
    """Step 1: the tower's tables, each with the features that read it."""
    by_table: dict[str, list[str]] = {}
    for f in features:
        by_table.setdefault(setup.sites.feature(f).table, []).append(f)
    out = []
    for name, names in by_table.items():
        table = setup.sites.table(name)
        # inside the host a table lives at its padded width (memory, rows read, traffic)
        out.append(TableLoad(name, table.num_embeddings, padded_dim(table.embedding_dim), table.dtype_bytes, len(names),
                             sum(setup.pooling.get(f, 1.0) for f in names)))
    return out


def intra_bytes(setup: Setup, load: HostLoad, rank: int) -> float:
    """What the rank sends inside its host: its sharding's traffic and the KJT handshakes."""
    return load.sent[rank] + handshake_bytes() * (setup.ranks - 1)


def _intra_load(setup: Setup, load: HostLoad, rank: int) -> TierLoad:
    """The rank's TorchRec all-to-alls inside its host: L - 1 messages each."""
    collectives = COLLECTIVES if setup.ranks > 1 else 0
    return TierLoad(COLLECTIVES * (setup.ranks - 1), intra_bytes(setup, load, rank), collectives)


def _host_time(setup: Setup, load: HostLoad, rank: int) -> float:
    """What a host's sharding decides: the rank's lookup and intra-host exchanges."""
    step = StepLoad(lookup_row_bytes=load.row_bytes[rank], intra=_intra_load(setup, load, rank))
    return step_terms(step, setup.tiers, setup.hardware, setup.params)["total"]


def best_sharding(setup: Setup, tables: Sequence[TableLoad]) -> tuple[str, HostLoad, bool]:
    """Step 2: (name, load, fits): the fastest sharding that fits; else the one needing least memory."""
    samples = setup.hosts * setup.batch
    loads = {name: SHARDING_MODELS[name](tables, setup.ranks, samples) for name in setup.shardings}
    limit = setup.memory_per_rank
    fitting = [n for n, l in loads.items() if limit is None or max(l.memory) <= limit]
    if not fitting:
        name = min(loads, key=lambda n: (max(loads[n].memory), list(setup.shardings).index(n)))
        return name, loads[name], False
    order = list(setup.shardings)  # ties go to the earlier one: table_wise, the runtime's default, first
    name = min(fitting, key=lambda n: (max(_host_time(setup, loads[n], r) for r in range(setup.ranks)),
                                       order.index(n)))
    return name, loads[name], True


def cross_collectives(setup: Setup) -> int:
    """The peer exchange's collectives per step: ids (lengths and values in one[, weights]),
    pooled both ways."""
    return (PEER_ID_COLLECTIVES + setup.any_weighted + EMBEDDING_COLLECTIVES) if setup.hosts > 1 else 0


def cross_load(setup: Setup, host: int, tower_host: list[int], ids: list[float], out: list[int]) -> tuple[float, float]:
    """Step 3: (messages, bytes) one rank of `host` sends across hosts per step."""
    if setup.hosts == 1:
        return 0.0, 0.0
    sent = 0.0  # the peer id exchange sends no split handshake (every rank sends B samples)
    for t, h in enumerate(tower_host):
        if h == host:  # its tower's outputs for the other hosts' samples (forward)
            sent += (setup.hosts - 1) * setup.batch * out[t] * EMBEDDING_BYTES
        else:  # its samples' ids to the tower, the gradient of the tower's output back
            sent += ids[t] + setup.batch * out[t] * EMBEDDING_BYTES
    return float(cross_collectives(setup) * (setup.hosts - 1)), sent


def _peer_id_bytes(setup: Setup, features: Sequence[str]) -> float:
    """A rank's ids for one tower: int32 lengths and values (`peer_id_bytes`: the runtime
    narrows validated ids) and fp32 weights of weighted features."""
    ids = setup.batch * sum(setup.pooling.get(f, 1.0) for f in features)
    weighted = setup.batch * sum(setup.pooling.get(f, 1.0) for f in features if setup.sites.feature(f).weighted)
    return peer_id_bytes(setup.batch, len(features), ids) + weighted * WEIGHT_BYTES


def evaluate(setup: Setup, groups: Sequence[Sequence[str]], compression: int, tower_module: str,
             widths: Sequence[int], macs_per_row: Sequence[float], refused: str = "",
             towers_per_domain: int = 1) -> Candidate:
    """A candidate: tower t on host t // k with `widths[t]` floats per sample sent back."""
    tower_host = [t // towers_per_domain for t in range(len(groups))]
    on_host = [[t for t, h in enumerate(tower_host) if h == host] for host in range(setup.hosts)]
    chosen = {h: best_sharding(setup, tower_tables(setup, [f for t in mine for f in groups[t]]))
              for h, mine in enumerate(on_host) if mine}
    ids = [_peer_id_bytes(setup, g) for g in groups]
    rows_per_rank = setup.hosts * setup.batch / setup.ranks  # the tower module runs data-parallel in the host
    best: tuple[float, int, dict[str, float], float] | None = None
    peer = cross_collectives(setup)
    for host in range(setup.hosts):
        messages, cross = cross_load(setup, host, tower_host, ids, list(widths))
        macs = sum(macs_per_row[t] for t in on_host[host])
        for r in range(setup.ranks):
            load = chosen[host][1] if host in chosen else None
            intra = _intra_load(setup, load, r) if load else TierLoad()
            rank = StepLoad(setup.hardware.compute_s, load.row_bytes[r] if load else 0.0,
                            macs * rows_per_rank if load else 0.0, intra=intra,
                            cross=TierLoad(messages, cross, peer), collectives=intra.collectives + peer)
            terms = step_terms(rank, setup.tiers, setup.hardware, setup.params)
            if best is None or terms["total"] > best[0]:
                best = (terms["total"], host * setup.ranks + r, terms, cross)
    assert best is not None
    memory = max(max(load.memory) for _, load, _ in chosen.values())
    kept = _kept(setup, groups)
    if not refused:
        refused = _refusal(setup, list(chosen.values()), memory, compression, kept)
    return Candidate(len(groups), compression, tower_module, tuple(tuple(g) for g in groups),
                     tuple(chosen[h][0] for h in tower_host), best[0], best[2], best[1], memory, best[3],
                     kept, refused, towers_per_domain, tuple(tower_host))


def _kept(setup: Setup, groups: Sequence[Sequence[str]]) -> float | None:
    return None if setup.affinity is None else within_tower_affinity(groups, setup.affinity)


def _refusal(setup: Setup, chosen: list[tuple[str, HostLoad, bool]], memory: int, compression: int,
             kept: float | None) -> str:
    if not all(fits for _, _, fits in chosen):
        return f"memory: {memory:,} B of tables on the busiest rank > {setup.memory_per_rank:,} B"
    if compression > 1 and kept is not None and kept < setup.quality_budget:
        return f"quality: keeps {kept:.3f} of the affinity < budget {setup.quality_budget:g}"
    return ""
