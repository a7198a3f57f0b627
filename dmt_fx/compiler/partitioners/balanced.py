"""Partitioner "balanced" (the default): balanced lookup cost and memory, policy only.

Algorithm:
  1. Units are tables with every feature that shares them (a table never spans towers).
  2. Each unit has a lookup cost and a memory, both taken as shares of the model's totals.
  3. Greedy, largest unit first: put the unit on the tower whose current load
     max(cost share, memory share) is smallest (ties: lowest index).
  4. Report the achieved imbalances (max / mean per metric) and the bound the greedy
     guarantees, 2 + T x (largest unit share) (units.py). Achieved values are usually near 1.
H x k towers (k = towers_per_domain, default 1: one per domain, fewer if there are fewer
tables), tower t on domain t // k. Each tower is within the bound, so each domain (the sum
of k towers, mean k x the tower mean) is too: domain imbalance <= the towers' imbalance.
"""

from __future__ import annotations

from typing import Mapping

from dmt_fx.compiler.partitioners.base import PartitionRequest, register_partitioner
from dmt_fx.compiler.partitioners.units import (
    balance_bound,
    balanced_placement,
    table_units,
    unit_features,
    unit_shares,
)
from dmt_fx.compiler.plans import build_plan, tower_count
from dmt_fx.ir.plan import TowerPlan
from dmt_fx.ir.sites import ModelSites
from dmt_fx.ir.topology import Topology


def balanced_groups(units: list[list[str]], cost: list[float], mem: list[float], num_towers: int) -> list[list[str]]:
    """Step 3: the greedy min-max placement's features per tower."""
    return unit_features(units, balanced_placement(cost, mem, num_towers))


def balanced_plan(sites: ModelSites, topology: Topology, pooling: Mapping[str, float], *,
                  towers_per_domain: int = 1) -> TowerPlan:
    units = table_units(sites)
    num_towers = tower_count(topology, len(units), towers_per_domain)
    cost, mem = unit_shares(units, sites, pooling)
    groups = balanced_groups(units, cost, mem, num_towers)
    return build_plan(groups, sites, topology, pooling, partitioner="balanced",
                      balance_bound=balance_bound(num_towers, cost, mem), towers_per_domain=towers_per_domain)


def balanced(request: PartitionRequest) -> TowerPlan:
    return balanced_plan(request.sites, request.topology, request.pooling,
                         towers_per_domain=request.towers_per_domain)


register_partitioner("balanced", balanced)
