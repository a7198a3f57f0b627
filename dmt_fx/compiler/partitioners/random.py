"""Partitioner "random": a seeded random split that still meets the balanced bound (a baseline
for measuring the other partitioners).

Units shuffled with random.Random(seed), dealt round-robin, then repaired into the bound by
violation-reducing moves/swaps (fallback: greedy placement in the shuffled order, which
meets the bound by the argument in units.py).
"""

from __future__ import annotations

import random
from typing import Mapping

from dmt_fx.compiler.partitioners.base import PartitionRequest, register_partitioner
from dmt_fx.compiler.partitioners.search import Assignment, groups_of
from dmt_fx.compiler.partitioners.units import balance_bound, greedy_placement, table_units, unit_features, unit_shares
from dmt_fx.compiler.plans import build_plan, tower_count
from dmt_fx.ir.plan import TowerPlan
from dmt_fx.ir.sites import ModelSites
from dmt_fx.ir.topology import Topology


def random_plan(sites: ModelSites, topology: Topology, pooling: Mapping[str, float], *, seed: int = 0,
                towers_per_domain: int = 1) -> TowerPlan:
    units = table_units(sites)
    num_towers = tower_count(topology, len(units), towers_per_domain)
    cost, mem = unit_shares(units, sites, pooling)
    bound = balance_bound(num_towers, cost, mem)
    n = len(units)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    where = [0] * n
    for k, u in enumerate(order):
        where[u] = k % num_towers
    zeros = [[0.0] * n for _ in range(n)]
    state = Assignment(where, num_towers, cost, mem, zeros, (bound, bound))
    if state.repair(8 * n * max(num_towers, 2) + 16):
        placed = groups_of(state.tower_of, num_towers)
    else:
        placed = greedy_placement(order, cost, mem, num_towers)
    return build_plan(unit_features(units, placed), sites, topology, pooling, partitioner="random",
                      balance_bound=bound, towers_per_domain=towers_per_domain)


def random_partitioner(request: PartitionRequest) -> TowerPlan:
    return random_plan(request.sites, request.topology, request.pooling, seed=request.seed,
                       towers_per_domain=request.towers_per_domain)


register_partitioner("random", random_partitioner)
