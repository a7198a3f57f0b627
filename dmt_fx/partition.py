"""Balanced Tower Partitioner: the default plan (policy only, no graph code).

Algorithm:
  1. Units are tables with every feature that shares them (a table never spans towers).
  2. Each unit has a lookup cost (pooling factor x dim x 4 bytes per sample) and a memory
     (rows x dim x dtype size), both taken as shares of the model's totals.
  3. Greedy, largest unit first: put the unit on the tower whose current load
     max(cost share, memory share) is smallest (ties: lowest index).
  4. Report the achieved imbalances (max / mean per metric) and the bound the greedy
     guarantees: when a unit is placed its tower has max-share <= 2/T (the sum over towers of
     max(c, m) is at most 2), so every metric's max load <= 2 x mean + the largest unit,
     i.e. imbalance <= 2 + T x (largest unit share). Achieved values are usually near 1.
"""

from __future__ import annotations

from typing import Mapping

from dmt_fx.analysis import ModelSites
from dmt_fx.plan import TowerPlan, build_plan
from dmt_fx.topology import Topology


def table_units(sites: ModelSites) -> list[list[str]]:
    """Step 1: features grouped by table, in model order."""
    units: dict[str, list[str]] = {}
    for f in sites.features:
        units.setdefault(f.table, []).append(f.name)
    return list(units.values())


def _unit_shares(units, sites, pooling):
    costs = [sum(pooling.get(f, 1.0) * sites.feature(f).dim for f in u) for u in units]
    mems = [sites.table(sites.feature(u[0]).table).memory_bytes for u in units]
    total_c, total_m = sum(costs) or 1.0, sum(mems) or 1.0
    return [c / total_c for c in costs], [m / total_m for m in mems]


def balance_bound(num_towers: int, cost_shares: list[float], mem_shares: list[float]) -> float:
    largest = max(max(cost_shares, default=0.0), max(mem_shares, default=0.0))
    return round(2.0 + num_towers * largest, 4)


def balanced_groups(units: list[list[str]], cost: list[float], mem: list[float], num_towers: int) -> list[list[str]]:
    """Step 3: greedy min-max placement, largest unit first (stable order)."""
    order = sorted(range(len(units)), key=lambda i: (-max(cost[i], mem[i]), i))
    loads = [[0.0, 0.0] for _ in range(num_towers)]
    placed: list[list[int]] = [[] for _ in range(num_towers)]
    for i in order:
        tower = min(range(num_towers), key=lambda t: (max(loads[t]), t))
        loads[tower][0] += cost[i]
        loads[tower][1] += mem[i]
        placed[tower].append(i)
    # Keep model order inside a tower so graphs and plans read naturally.
    return [[f for i in sorted(p) for f in units[i]] for p in placed]


def balanced_plan(sites: ModelSites, topology: Topology, pooling: Mapping[str, float]) -> TowerPlan:
    units = table_units(sites)
    num_towers = min(topology.num_hosts, len(units))
    cost, mem = _unit_shares(units, sites, pooling)
    groups = balanced_groups(units, cost, mem, num_towers)
    return build_plan(groups, sites, topology, pooling, partitioner="balanced",
                      balance_bound=balance_bound(num_towers, cost, mem))
