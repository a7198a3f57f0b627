"""plan="auto": the number of towers, the compression and each tower's sharding, chosen by
the cost model's predicted step time under the memory per rank and a quality budget.

Algorithm (`auto_plan`):
  1. compressions: c = 1 (identity towers: the model unchanged) always; c in 2, 4, 8 when
     the tower-module kind compresses (opt-in: it changes the model), the model has an
     interaction site and example inputs (to measure the interaction affinity);
  2. tower layouts: T = 1 .. min(hosts, units) towers, tower t on host t (k = 1), and k = 2,
     3, ... towers per host (T = H x k <= units, tower t on host t // k, as
     transform(towers_per_domain=k) places them). Features per tower: the balanced
     partitioner's for c = 1 (the model is unchanged: only balance matters), the learned
     partitioner's (most affinity kept, within the balance limits) for c > 1; for k > 1 the
     towers are paired heavy with light per host (plans.balance_domains);
  3. every (layout, c) is evaluated (candidates.py): each host's sharding (its k towers
     share it), busiest rank's time and memory, kept affinity; refused when its tables do
     not fit the memory per rank, or when it compresses and keeps less than the quality
     budget of the pairwise affinity;
  4. the fastest candidate that is not refused wins (ties: smaller c, then fewer towers per
     host, then more towers); none fits the memory: a DMTError with the arithmetic. The plan
     carries each tower's sharding (`Tower.sharding`), which `distribute` runs.

The quality budget only binds compressing candidates: identity towers compute the original
model whatever the split. A sequence tower-module kind (`seq_mean`, `seq_attention`) is
priced per c in 1, 2, 4, 8 on the balanced partition: each sequence feature sends ceil(d / c)
floats per sample instead of d x its mean length, its pooled features their rows. The
affinity budget does not apply (each sequence is reduced by itself, whatever shares its
tower); c > 1 is listed but refused for quality (SEQUENCE_QUALITY), and identity (c = 1,
the model unchanged) is a candidate beside the kind's c = 1.

DEFAULT_QUALITY_BUDGET is justified in the README ("Plans chosen for you") from
benchmarks/quality_budget.py.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping, Sequence

from dmt_fx.compiler.affinity import interaction_affinity
from dmt_fx.compiler.auto_plan.candidates import Candidate, Setup, evaluate
from dmt_fx.compiler.auto_plan.shardings import SHARDING_MODELS
from dmt_fx.compiler.interactions import interaction_kind
from dmt_fx.compiler.partitioners.learned import learned_plan
from dmt_fx.compiler.partitioners.units import (
    balance_bound,
    balanced_placement,
    table_units,
    unit_features,
    unit_shares,
)
from dmt_fx.compiler.plans import balance_domains, build_plan, domain_hosts, tower_loads
from dmt_fx.compiler.tower_modules import TowerModuleKind, out_width
from dmt_fx.compiler.tower_modules.sequence import reduced_width
from dmt_fx.cost.links import tiers_of
from dmt_fx.cost.params import CostParams, load_params
from dmt_fx.cost.steptime import Hardware
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.plan import TowerPlan
from dmt_fx.ir.sites import ModelSites
from dmt_fx.ir.topology import Topology

DEFAULT_QUALITY_BUDGET = 0.9
COMPRESSIONS = (1, 2, 4, 8)
MAX_TOWERS_PER_DOMAIN = 8  # k tried up to this (and units // hosts) unless AutoOptions names the k
# why a sequence kind's c > 1 is not chosen for the user (benchmarks/quality_sequences.py)
SEQUENCE_QUALITY = ("quality: a sequence kind at c > 1 (+1.3% to +1.8% NE at c = 4, quality.py --task "
                    "sequences); pass compression=c without plan='auto'")


@dataclasses.dataclass(frozen=True)
class AutoOptions:
    """What plan="auto" optimises for; `transform(plan=AutoOptions(...))` passes them.

    Args:
        memory_per_rank: bytes of tables one rank may hold (None: no limit).
        quality_budget: the share of pairwise interaction affinity a compressing plan must
            keep inside towers (default 0.9; binds only c > 1).
        batch_size: the local batch per rank the step time is predicted for.
        compressions: the c > 1 to try with a compressing tower module.
        hardware: the embedding-row bandwidth and tower-module FLOP rate assumed.
        towers_per_domain: the k towers per host to try (None: 1, 2, ...).
        cost_params: the step model's parameters: None (the model at face value), a
            `dmt_fx.cost.CostParams`, or the path of the JSON file
            `benchmarks/cost_sweep.py --save-params` writes (read when the options are built).

    Raises:
        DMTError: an option out of range or a malformed cost_params file (checked when built);
            from `transform`, no candidate fits `memory_per_rank` (found the least bytes any
            needs, expected the limit).

    Example:
        >>> import dmt_fx
        >>> from dmt_fx.models.zoo import default_dlrm
        >>> model, batch = default_dlrm()
        >>> gm = dmt_fx.transform(model, "2x2", example_inputs=batch,
        ...                       plan=dmt_fx.AutoOptions(memory_per_rank=10**9))
        >>> gm.meta["dmt_auto"].plan.topology
        '2x2'
    """

    memory_per_rank: int | None = None  # bytes of tables a rank may hold (None: no limit)
    quality_budget: float = DEFAULT_QUALITY_BUDGET  # share of pairwise affinity kept inside towers
    batch_size: int = 512  # local batch per rank the step time is predicted for
    compressions: tuple[int, ...] = COMPRESSIONS
    hardware: Hardware = Hardware()
    # k towers per host to try (tower t on host t // k); None: 1, 2, ... while H x k <= units
    # (at most MAX_TOWERS_PER_DOMAIN). k = 1 also tries fewer towers than hosts.
    towers_per_domain: tuple[int, ...] | None = None
    # the step model's parameters: a CostParams, or a fitted file's path (loaded here, once)
    cost_params: CostParams | str | os.PathLike | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cost_params", load_params(self.cost_params))  # frozen: set once, here
        if self.towers_per_domain is not None and (not self.towers_per_domain
                                                   or min(self.towers_per_domain) < 1):
            raise DMTError(f"towers_per_domain={self.towers_per_domain!r}", "k values >= 1, e.g. (1, 2), or None",
                           ["pass towers_per_domain=None to let plan='auto' try k = 1, 2, ..."])
        if not 0.0 <= self.quality_budget <= 1.0:
            raise DMTError(f"quality_budget={self.quality_budget!r}", "a share of affinity in [0, 1]",
                           [f"pass e.g. quality_budget={DEFAULT_QUALITY_BUDGET}"])
        if self.memory_per_rank is not None and self.memory_per_rank < 1:
            raise DMTError(f"memory_per_rank={self.memory_per_rank!r}", "a positive number of bytes",
                           ["pass e.g. memory_per_rank=40e9 for 40 GB of tables per rank"])

    @property
    def params(self) -> CostParams:
        """`cost_params` as loaded (a CostParams, whatever was passed)."""
        assert isinstance(self.cost_params, CostParams)
        return self.cost_params


@dataclasses.dataclass(frozen=True)
class AutoPlan:
    """The chosen plan and why: every candidate, the winner and the reason."""

    plan: TowerPlan
    compression: int
    tower_module: str  # the kind to build ("identity" for c = 1, except a sequence kind's own c = 1)
    shardings: tuple[str, ...]  # per tower: the intra-host sharding chosen
    candidates: tuple[Candidate, ...]
    winner: int  # index into candidates
    options: AutoOptions
    links: Mapping[str, Mapping[str, float]]
    why: str
    notes: tuple[str, ...] = ()

    sharding: str = ""  # the best ONE sharding for every tower (plans without Tower.sharding)
    towers_per_domain: int = 1  # k of the chosen plan


    def to_dict(self) -> dict[str, Any]:
        return {"towers": len(self.plan.towers), "compression": self.compression, "tower_module": self.tower_module,
                "towers_per_domain": self.towers_per_domain, "tower_hosts": [t.host for t in self.plan.towers],
                "shardings": list(self.shardings), "sharding": self.sharding,
                "predicted_step_s": self.candidates[self.winner].step_s, "winner": self.winner, "why": self.why,
                "notes": list(self.notes), "quality_budget": self.options.quality_budget,
                "memory_per_rank": self.options.memory_per_rank, "batch_size": self.options.batch_size,
                "hardware": dataclasses.asdict(self.options.hardware), "links": dict(self.links),
                "cost_params": self.options.params.to_dict(),
                "candidates": [c.to_dict() for c in self.candidates]}


def _macs_per_row(kind: str, dims: Sequence[int], out: int) -> float:
    """Multiply-adds of one sample through a built-in tower module (unknown kinds: one projection)."""
    width, n = sum(dims), len(dims)
    pairs = n * (n - 1) // 2
    per_kind = {"dot": pairs * (dims[0] if dims else 0) + (width + pairs) * out, "dcn": width * width + width * out}
    return float(per_kind.get(kind, width * out))


def _compressions(sites: ModelSites, kind: TowerModuleKind, inputs: tuple | None,
                  options: AutoOptions) -> tuple[list[int], list[str]]:
    """Step 1: the c values to try, and why others are not."""
    if not kind.changes_model:
        return [1], [f"c > 1 not considered: tower_module={kind.name!r} keeps the model "
                     "(pass tower_module='dot', 'linear' or 'dcn' to let plan='auto' compress)"]
    if kind.sequences:  # reduces the sequences where the model does: no interaction site needed
        return sorted({1, *options.compressions}), []
    if not sites.interaction.found or inputs is None:
        why = "the model has no interaction site" if not sites.interaction.found else "no example_inputs"
        return [1], [f"c > 1 not considered: {why} (compressing towers need both)"]
    return sorted({1, *options.compressions}), []


def _vector_dim(sites: ModelSites) -> int | None:
    if not interaction_kind(sites.interaction.kind).vectors:
        return None
    dims = {f.dim for f in sites.features}
    return dims.pop() if len(dims) == 1 else -1  # -1: vectors of unequal dims cannot be compressed


def _layouts(hosts: int, units: int, options: AutoOptions) -> list[tuple[int, int]]:
    """Step 2: (towers, k) to try: 1 .. min(H, units) towers one per host, then H x k for k > 1."""
    wanted = options.towers_per_domain or range(1, MAX_TOWERS_PER_DOMAIN + 1)
    out = [(t, 1) for t in range(1, min(hosts, units) + 1)] if 1 in wanted else []
    out += [(hosts * k, k) for k in sorted(set(wanted)) if k > 1 and hosts * k <= units]
    if not out:
        raise DMTError(f"towers_per_domain={tuple(wanted)} on {hosts} hosts with {units} table units",
                       f"H x k <= {units} units for some k", [f"try k <= {max(units // hosts, 1)}"])
    return out


def _groups(setup: Setup, towers: int, k: int, compressing: bool, seed: int) -> list[list[str]]:
    """Step 2: features per tower for T towers, k consecutive ones per host."""
    sites, pooling = setup.sites, setup.pooling
    if compressing and setup.affinity is not None and towers > 1:
        plan = learned_plan(sites, Topology(towers, setup.ranks), pooling, model=None, example_inputs=None,
                            seed=seed, affinity=setup.affinity)
        groups = [list(t.features) for t in plan.towers]
    else:
        units = table_units(sites)
        cost, mem = unit_shares(units, sites, pooling)
        groups = unit_features(units, balanced_placement(cost, mem, towers))
    if k > 1:  # heavy towers paired with light ones on each host
        groups = balance_domains(groups, tower_loads(groups, sites, pooling), setup.hosts, k)
    return groups


def _candidate(setup: Setup, groups: list[list[str]], c: int, kind: TowerModuleKind,
               vector_dim: int | None, k: int = 1) -> Candidate:
    dims = [[setup.sites.feature(f).dim for f in g] for g in groups]
    if c == 1:  # floats back per sample; a sequence feature's: one row per id (its mean length)
        rows = [sum(f.dim * (f.mean_length if f.sequence else 1.0) for f in map(setup.sites.feature, g)) for g in groups]
        return evaluate(setup, groups, 1, "identity", rows, [0.0] * len(groups), "", k)
    refused = ""
    if vector_dim == -1:
        refused = "kind: a vector interaction over unequal embedding dims cannot take compressed towers"
    elif kind.name == "dot" and any(len(set(d)) > 1 for d in dims):
        refused = "kind: tower_module='dot' needs one embedding dim per tower"
    vd = None if vector_dim == -1 else vector_dim
    widths = [out_width(tuple(d), c, vd) for d in dims]
    narrow = [t for t, (d, w) in enumerate(zip(dims, widths)) if len(d) * (len(d) - 1) // 2 > w]
    if kind.name == "dot" and narrow and not refused:  # the dot module passes its dots on only when they fit
        n = len(dims[narrow[0]])
        refused = (f"quality: tower {narrow[0]}'s {n * (n - 1) // 2} within-tower dot products do not fit "
                   f"its {widths[narrow[0]]} output floats")
    macs = [_macs_per_row(kind.name, d, w) for d, w in zip(dims, widths)]
    return evaluate(setup, groups, c, kind.name, widths, macs, refused, k)


def _sequence_candidate(setup: Setup, groups: list[list[str]], c: int, kind: TowerModuleKind,
                        k: int = 1) -> Candidate:
    """A sequence kind at c: each sequence feature sends its reduction, ceil(d / c) floats per
    sample, the pooled features their rows; the MACs are the pooling and the projection."""
    features = [[setup.sites.feature(f) for f in g] for g in groups]
    widths = [sum(reduced_width(f.dim, c) if f.sequence else f.dim for f in g) for g in features]
    macs = [sum(_sequence_macs(kind.name, f.dim, f.mean_length, c) for f in g if f.sequence) for g in features]
    refused = SEQUENCE_QUALITY if c > 1 else ""
    return evaluate(dataclasses.replace(setup, affinity=None), groups, c, kind.name, widths, macs, refused, k)


def _sequence_macs(kind: str, dim: int, mean_length: float, c: int) -> float:
    """Per sample: the pooling over its rows (attention: scores, weights and the weighted sum)
    and the projection to ceil(d / c) (none at c = 1)."""
    width = reduced_width(dim, c)
    return (3.0 if kind == "seq_attention" else 1.0) * mean_length * dim + (dim * width if width != dim else 0)


def _evaluate(setup: Setup, groups: list[list[str]], c: int, kind: TowerModuleKind, vector_dim: int | None,
              k: int, tower_module: str) -> Candidate:
    """The candidate of `tower_module` at c (identity, a sequence kind, or a compressing kind)."""
    if kind.sequences and tower_module == kind.name:
        return _sequence_candidate(setup, groups, c, kind, k)
    return _candidate(setup, groups, c, kind, vector_dim, k)


def auto_plan(sites: ModelSites, topology: Topology, pooling: Mapping[str, float], *, kind: TowerModuleKind,
              model: Any = None, example_inputs: tuple | None = None, options: AutoOptions | None = None,
              seed: int = 0) -> AutoPlan:
    """Choose towers, compression and shardings (see the module docstring)."""
    options = options or AutoOptions()
    compressions, notes = _compressions(sites, kind, example_inputs, options)
    affinity = (interaction_affinity(model, sites, example_inputs)
                if model is not None and example_inputs is not None and len(sites.features) > 1 else None)
    params = options.params
    tiers = params.tiers or tiers_of(topology)  # fitted links, when the parameters carry them
    setup = Setup(sites, pooling, topology.num_hosts, topology.local_world_size, options.batch_size,
                  tiers, options.hardware, options.memory_per_rank, options.quality_budget, affinity, params=params)
    vector_dim = _vector_dim(sites) if max(compressions) > 1 and not kind.sequences else None
    candidates = []
    for towers, k in _layouts(topology.num_hosts, len(table_units(sites)), options):
        plain = _groups(setup, towers, k, False, seed)
        if kind.sequences:  # identity, then the kind at every c, on the balanced partition
            candidates.append(_candidate(setup, plain, 1, kind, None, k))
            candidates += [_sequence_candidate(setup, plain, c, kind, k) for c in compressions]
            continue
        learned = _groups(setup, towers, k, True, seed) if max(compressions) > 1 else plain
        candidates += [_candidate(setup, plain if c == 1 else learned, c, kind, vector_dim, k) for c in compressions]
    winner = _winner(candidates, options)
    chosen = candidates[winner]
    plan = _plan(sites, topology, pooling, chosen)
    return AutoPlan(plan, chosen.compression, chosen.tower_module, chosen.shardings, tuple(candidates), winner,
                    options, tiers.to_dict(), _why(candidates, winner, options), tuple(notes),
                    _uniform_sharding(setup, chosen, kind, vector_dim), chosen.towers_per_domain)


def _uniform_sharding(setup: Setup, chosen: Candidate, kind: TowerModuleKind, vector_dim: int | None) -> str:
    """The runtime applies one sharding to every host: the fastest single one for the chosen towers."""
    if len(set(chosen.shardings)) == 1:
        return chosen.shardings[0]
    timed = {}
    for name in SHARDING_MODELS:
        one = _evaluate(dataclasses.replace(setup, shardings=(name,)), [list(g) for g in chosen.groups],
                        chosen.compression, kind, vector_dim, chosen.towers_per_domain, chosen.tower_module)
        if not one.refused.startswith("memory"):
            timed[name] = one.step_s
    order = list(SHARDING_MODELS)
    return min(timed, key=lambda n: (timed[n], order.index(n))) if timed else chosen.shardings[0]


def _plan(sites: ModelSites, topology: Topology, pooling: Mapping[str, float], chosen: Candidate) -> TowerPlan:
    units = table_units(sites)
    cost, mem = unit_shares(units, sites, pooling)
    plan = build_plan([list(g) for g in chosen.groups], sites, topology, pooling, partitioner="auto",
                      balance_bound=balance_bound(chosen.towers, cost, mem),
                      hosts=domain_hosts(chosen.towers, chosen.towers_per_domain))
    return plan.with_shardings(chosen.shardings)  # distribute shards each host as chosen


def _winner(candidates: Sequence[Candidate], options: AutoOptions) -> int:
    """Step 4: the fastest candidate not refused; none fits the memory: the arithmetic."""
    open_ = [i for i, c in enumerate(candidates) if not c.refused]
    if open_:
        return min(open_, key=lambda i: (candidates[i].step_s, candidates[i].compression,
                                         candidates[i].towers_per_domain, -candidates[i].towers))
    raise _memory_error(candidates, options)


def _memory_error(candidates: Sequence[Candidate], options: AutoOptions) -> DMTError:
    best = min(candidates, key=lambda c: (c.memory_per_rank, c.step_s))
    limit = options.memory_per_rank or 0
    return DMTError(
        f"{best.memory_per_rank:,} bytes of tables on the busiest rank (the least of {len(candidates)} "
        f"candidates: {best.label}, rank {best.busiest_rank})",
        f"<= {limit:,} bytes per rank (memory_per_rank)",
        [f"raise the memory per rank to at least {best.memory_per_rank:,} bytes",
         f"use more ranks per host: the busiest rank needs about {math.ceil(best.memory_per_rank / limit)}x fewer "
         "table bytes" if limit else "use more ranks per host",
         "shrink the largest tables (fewer rows, a smaller dim, hashing)"])


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def _why(candidates: Sequence[Candidate], winner: int, options: AutoOptions) -> str:
    chosen = candidates[winner]
    others = sorted((c for i, c in enumerate(candidates) if i != winner and not c.refused), key=lambda c: c.step_s)
    terms = {k: v for k, v in chosen.breakdown.items() if k != "total"}
    top = max(terms, key=terms.get)
    text = (f"{chosen.label}: fastest of {len(candidates) - sum(bool(c.refused) for c in candidates)} admissible "
            f"candidates, {_ms(chosen.step_s)} per step predicted (busiest rank {chosen.busiest_rank}; largest term "
            f"{top} {_ms(terms[top])})")
    if others:
        runner = others[0]
        text += f"; runner-up {runner.label} {_ms(runner.step_s)} ({runner.step_s / chosen.step_s:.4f}x)"
    refused = {k: sum(c.refused.startswith(k) for c in candidates) for k in ("memory", "quality", "kind")}
    sequence = any(c.refused == SEQUENCE_QUALITY for c in candidates)
    said = [f"{n} for {k}" + ((" (a sequence kind at c > 1)" if sequence else
                               f" (kept affinity < {options.quality_budget:g})") if k == "quality" else "")
            for k, n in refused.items() if n]
    if said:
        text += f"; refused: {', '.join(said)}"
    return text
