"""What every partitioner shares: units, their load shares, the balance bound and placements.

Units are tables with every feature that shares them (a table never spans towers), joined
with the other tables of their composite embedding (a quotient-remainder pair). A joint
table split by field is one table per field (its row range), so each field is a unit. Each
unit has a lookup cost (pooling factor x dim x 4 bytes per sample) and a memory (rows x dim
x dtype size), both taken as shares of the model's totals. The greedy placement puts each
unit on the tower whose current load max(cost share, memory share) is smallest (ties:
lowest index). When a unit is placed its tower has max-share <= 2/T (the sum over towers of
max(c, m) is at most 2), so every metric's max load <= 2 x mean + the largest unit, i.e.
imbalance <= 2 + T x (largest unit share): `balance_bound`, the bound the built-in
partitioners guarantee.
"""

from __future__ import annotations

import heapq
from typing import Mapping

from dmt_fx.ir.sites import ModelSites


def table_units(sites: ModelSites) -> list[list[str]]:
    """Features grouped by table and by composite embedding (the tables of one
    quotient-remainder bag stay together), in model order."""
    parent: dict[str, str] = {}

    def root(label: str) -> str:
        while parent.setdefault(label, label) != label:
            label = parent[label]
        return label

    for f in sites.features:  # a feature joins its table and its composite into one group
        if f.unit:
            parent[root(f"unit:{f.unit}")] = root(f"table:{f.table}")
    units: dict[str, list[str]] = {}
    for f in sites.features:
        units.setdefault(root(f"table:{f.table}"), []).append(f.name)
    return list(units.values())


def unit_shares(units: list[list[str]], sites: ModelSites,
                pooling: Mapping[str, float]) -> tuple[list[float], list[float]]:
    """(lookup cost shares, memory shares) of the units."""
    costs = [sum(pooling.get(f, 1.0) * sites.feature(f).dim for f in u) for u in units]
    mems = [sum(sites.table(t).memory_bytes for t in {sites.feature(f).table for f in u}) for u in units]
    total_c, total_m = sum(costs) or 1.0, sum(mems) or 1.0
    return [c / total_c for c in costs], [m / total_m for m in mems]


def balance_bound(num_towers: int, cost_shares: list[float], mem_shares: list[float]) -> float:
    largest = max(max(cost_shares, default=0.0), max(mem_shares, default=0.0))
    return round(2.0 + num_towers * largest, 4)


def greedy_placement(order: list[int], cost: list[float], mem: list[float], num_towers: int) -> list[list[int]]:
    """Units in `order`, each onto the tower whose max(cost share, memory share) is smallest."""
    # A heap of (max share, tower): the same choice as a scan for the smallest (load, index)
    # pair, in O(log T) a unit instead of O(T) (plan="auto" places 10,000 units for every
    # tower count up to 64 x k: the scan was F x sum(T) lambda calls).
    loads = [[0.0, 0.0] for _ in range(num_towers)]
    placed: list[list[int]] = [[] for _ in range(num_towers)]
    heap = [(0.0, t) for t in range(num_towers)]
    for i in order:
        _, tower = heapq.heappop(heap)
        loads[tower][0] += cost[i]
        loads[tower][1] += mem[i]
        placed[tower].append(i)
        heapq.heappush(heap, (max(loads[tower]), tower))
    return placed


def balanced_placement(cost: list[float], mem: list[float], num_towers: int) -> list[list[int]]:
    """The greedy placement, largest unit first (stable order)."""
    order = sorted(range(len(cost)), key=lambda i: (-max(cost[i], mem[i]), i))
    return greedy_placement(order, cost, mem, num_towers)


def unit_features(units: list[list[str]], placed: list[list[int]]) -> list[list[str]]:
    """Each tower's features; model order inside a tower, so graphs and plans read naturally."""
    return [[f for i in sorted(p) for f in units[i]] for p in placed]


def imbalances(placed: list[list[int]], cost: list[float], mem: list[float], num_towers: int) -> tuple[float, float]:
    """T x the largest tower's (cost, memory) share: max / mean per metric."""
    return (num_towers * max(sum(cost[u] for u in p) for p in placed),
            num_towers * max(sum(mem[u] for u in p) for p in placed))
