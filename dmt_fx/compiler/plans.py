"""Building and checking tower plans against the analysed model and the topology.

`build_plan` turns feature groups into a `TowerPlan` (loads, imbalances, fingerprint), tower t
on domain t // k with k towers per domain (`tower_count` checks k against the units);
`validate_plan` checks a user's plan (every feature once, tables whole, composite embeddings
whole, hosts in range, made for this model and topology).
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping

from dmt_fx.ir.errors import DMTError, PlanError
from dmt_fx.ir.plan import Tower, TowerPlan
from dmt_fx.ir.sites import ModelSites
from dmt_fx.ir.topology import Topology


def tower_loads(towers: list[list[str]], sites: ModelSites,
                pooling: Mapping[str, float]) -> list[tuple[float, int, tuple[str, ...]]]:
    """(lookup cost, memory bytes, tables) per tower."""
    loads = []
    for features in towers:
        tables = sorted({sites.feature(f).table for f in features})
        cost = sum(pooling.get(f, 1.0) * sites.feature(f).dim * 4 for f in features)
        loads.append((cost, sum(sites.table(t).memory_bytes for t in tables), tuple(tables)))
    return loads


def imbalance(values: list[float]) -> float:
    mean = sum(values) / len(values) if values else 0.0
    return max(values) / mean if mean > 0 else 1.0


def tower_count(topology: Topology, num_units: int, towers_per_domain: int = 1) -> int:
    """How many towers a partitioner makes: k per domain, H x k in all.

    k = 1 keeps the old rule (fewer units than domains: one tower per unit, the last domains
    idle). k > 1 is an explicit request, so H x k towers must each get a unit: refused with
    the arithmetic rather than silently clamped (a clamp would leave domains uneven)."""
    check_towers_per_domain(towers_per_domain)
    wanted = topology.num_domains * towers_per_domain
    if towers_per_domain == 1:
        return min(wanted, num_units)
    if wanted > num_units:
        most = num_units // topology.num_domains
        raise DMTError(f"towers_per_domain={towers_per_domain} on {topology.num_domains} domains: "
                       f"{topology.num_domains} x {towers_per_domain} = {wanted} towers but only {num_units} "
                       "partition units (tables, with composite embeddings joined)",
                       f"domains x towers_per_domain <= {num_units}",
                       [f"pass towers_per_domain <= {most}" if most >= 1 else "pass towers_per_domain=1",
                        "or split the model's tables further"])
    return wanted


def check_towers_per_domain(towers_per_domain: object) -> None:
    if isinstance(towers_per_domain, bool) or not isinstance(towers_per_domain, int) or towers_per_domain < 1:
        raise DMTError(f"towers_per_domain={towers_per_domain!r}", "an int >= 1 (towers per fast domain)",
                       ["pass towers_per_domain=1 (one tower per domain, the default) or 2, 3, ..."])


def domain_hosts(num_towers: int, towers_per_domain: int = 1) -> list[int]:
    """Tower t on domain t // k: a partitioner's towers in order, k to a domain."""
    return [t // towers_per_domain for t in range(num_towers)]


def balance_domains(groups: list[list[str]], loads: list[tuple[float, int, tuple[str, ...]]], num_domains: int,
                    towers_per_domain: int) -> list[list[str]]:
    """The towers reordered so that k consecutive ones (a domain) carry similar loads.

    The greedy partitioners fill towers largest unit first, so towers 0, 1, ... come out
    heaviest first; k in order per domain would stack the heaviest on domain 0. Instead the
    towers go, heaviest first (max of cost and memory share), to the least-loaded domain with
    room; a domain's towers keep their relative order."""
    total_c = sum(c for c, _, _ in loads) or 1.0
    total_m = sum(m for _, m, _ in loads) or 1.0
    share = [max(c / total_c, m / total_m) for c, m, _ in loads]
    members: list[list[int]] = [[] for _ in range(num_domains)]
    load = [0.0] * num_domains
    for i in sorted(range(len(groups)), key=lambda i: (-share[i], i)):
        d = min((d for d in range(num_domains) if len(members[d]) < towers_per_domain), key=lambda d: (load[d], d))
        members[d].append(i)
        load[d] += share[i]
    return [groups[i] for d in range(num_domains) for i in sorted(members[d])]


def build_plan(groups: list[list[str]], sites: ModelSites, topology: Topology, pooling: Mapping[str, float],
               *, partitioner: str, balance_bound: float, hosts: list[int] | None = None,
               towers_per_domain: int = 1) -> TowerPlan:
    """Assemble a TowerPlan (loads, imbalances, fingerprint) from feature groups (tower t on
    domain t // towers_per_domain unless `hosts` says otherwise)."""
    if hosts is None and towers_per_domain > 1:
        groups = balance_domains(groups, tower_loads(groups, sites, pooling), topology.num_domains, towers_per_domain)
    hosts = hosts if hosts is not None else domain_hosts(len(groups), towers_per_domain)
    loads = tower_loads(groups, sites, pooling)
    towers = tuple(Tower(i, h, tuple(g), tables, round(cost, 3), mem)
                   for i, (g, h, (cost, mem, tables)) in enumerate(zip(groups, hosts, loads)))
    return TowerPlan(towers, str(topology), plan_fingerprint(sites, topology), partitioner,
                     round(imbalance([l[0] for l in loads]), 4), round(imbalance([l[1] for l in loads]), 4),
                     balance_bound, warnings=sites.warnings)


def plan_fingerprint(sites: ModelSites, topology: Topology) -> str:
    return f"{sites.fingerprint()}-{topology}"


def validate_plan(plan: TowerPlan, sites: ModelSites, topology: Topology, pooling: Mapping[str, float]) -> TowerPlan:
    """Check a user-given plan against the model and topology; return it with loads filled in."""
    if plan.fingerprint and plan.fingerprint != plan_fingerprint(sites, topology):
        reason = (f"topology {plan.topology}" if plan.topology and plan.topology != str(topology)
                  else "another model (its features, tables or sizes differ)")
        raise PlanError(f"a plan made for {reason}",
                        f"a plan for this model on topology {topology} (fingerprint {plan_fingerprint(sites, topology)})",
                        ["make a new plan with `dmt-fx plan TARGET --topology "
                         f"{topology} --format json`", "or drop the plan's 'fingerprint' field to skip this check"])
    _check_hosts(plan, topology)
    _check_features(plan, sites)
    _check_tables(plan, sites)
    groups = [list(t.features) for t in plan.towers]
    return build_plan(groups, sites, topology, pooling, partitioner=plan.partitioner,
                      balance_bound=plan.balance_bound, hosts=[t.host for t in plan.towers])


def _check_features(plan: TowerPlan, sites: ModelSites) -> None:
    known = [f.name for f in sites.features]
    named = list(plan.features)
    named_set = set(named)  # built once: a set per feature (or list.count) made this quadratic
    unknown = sorted(named_set - set(known))
    missing = [f for f in known if f not in named_set]
    repeated = sorted(f for f, n in Counter(named).items() if n > 1)
    problems = [f"unknown features {unknown}" if unknown else "",
                f"missing features {missing}" if missing else "",
                f"features in more than one tower {repeated}" if repeated else ""]
    problems = [p for p in problems if p]
    if problems:
        raise PlanError("a plan with " + "; ".join(problems),
                        f"every feature of the model exactly once: {known}",
                        ["list each feature in exactly one tower", "feature names are KJT keys (TorchRec) "
                         "or embedding module paths such as 'emb_l.3' (plain PyTorch)"])


def _check_hosts(plan: TowerPlan, topology: Topology) -> None:
    bad = [t.host for t in plan.towers if not 0 <= t.host < topology.num_hosts]
    if bad or not plan.towers:
        raise PlanError(f"tower hosts {bad}" if bad else "a plan with no towers",
                        f"hosts in 0..{topology.num_hosts - 1} (topology {topology})",
                        ["give each tower a host index below the number of hosts"])


def _check_tables(plan: TowerPlan, sites: ModelSites) -> None:
    where: dict[str, set[int]] = {}
    for tower in plan.towers:
        for f in tower.features:
            where.setdefault(sites.feature(f).table, set()).add(tower.index)
    split = {t: sorted(ix) for t, ix in where.items() if len(ix) > 1}
    _check_composites(plan, sites)
    if split:
        table, towers = next(iter(split.items()))
        sharing = [f.name for f in sites.features if f.table == table]
        raise PlanError(f"table {table!r} (features {sharing}) spread over towers {towers}",
                        "a table and all the features that share it in one tower",
                        [f"put {sharing} in the same tower"])


def _check_composites(plan: TowerPlan, sites: ModelSites) -> None:
    """The tables of one composite embedding (a quotient-remainder pair) share a tower."""
    tower_of = plan.tower_of()
    for unit, tables in sites.composites().items():
        features = [f.name for f in sites.features if f.unit == unit]
        towers = sorted({tower_of[f] for f in features})
        if len(towers) > 1:
            raise PlanError(f"composite embedding {unit!r} (tables {list(tables)}, features {features}) "
                            f"spread over towers {towers}",
                            "the tables of one composite embedding (e.g. a quotient-remainder pair) in one tower",
                            [f"put {features} in the same tower"])
