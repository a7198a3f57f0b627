"""Partitioner "user_towers": a model its author already towered (torchrec `EmbeddingTower`,
also inside an `EmbeddingTowerCollection`) keeps those towers whole.

Algorithm:
  1. Units: the features of each EmbeddingTower's collections form one unit (the author's
     tower); every table outside them is a unit of its own, as in "balanced".
  2. The balanced greedy placement of those units onto one tower per host (largest first),
     so several user towers may share a host and the remaining tables fill the gaps.
`transform` picks it by default when the model holds an EmbeddingTower; any other
partitioner or a plan still applies when asked for. Numerics do not depend on the plan.
"""

from __future__ import annotations

import torch.nn as nn
from torchrec.modules.embedding_tower import EmbeddingTower

from dmt_fx.compiler.partitioners.base import PartitionRequest, register_partitioner
from dmt_fx.compiler.partitioners.units import balance_bound, balanced_placement, unit_features, unit_shares
from dmt_fx.compiler.plans import build_plan, tower_count
from dmt_fx.ir.plan import TowerPlan
from dmt_fx.ir.sites import ModelSites


def user_tower_paths(model: nn.Module | None) -> list[str]:
    """Module paths of the model's torchrec EmbeddingTowers (empty for other models)."""
    if model is None:
        return []
    return [fqn for fqn, m in model.named_modules() if isinstance(m, EmbeddingTower)]


def user_tower_units(sites: ModelSites, paths: list[str]) -> list[list[str]]:
    """Step 1: one unit per user tower, then one per table outside them (model order)."""
    def owner(feature: str) -> str:
        module = next(s.module for s in sites.sites if feature in s.features)
        tower = next((p for p in paths if module.startswith(p + ".")), None)
        return f"tower:{tower}" if tower is not None else f"table:{sites.feature(feature).table}"

    units: dict[str, list[str]] = {}
    for f in sites.features:
        units.setdefault(owner(f.name), []).append(f.name)
    return list(units.values())


def user_towers(request: PartitionRequest) -> TowerPlan:
    units = user_tower_units(request.sites, user_tower_paths(request.model))
    num_towers = tower_count(request.topology, len(units), request.towers_per_domain)
    cost, mem = unit_shares(units, request.sites, request.pooling)
    groups = unit_features(units, balanced_placement(cost, mem, num_towers))  # Step 2
    return build_plan(groups, request.sites, request.topology, request.pooling, partitioner="user_towers",
                      balance_bound=balance_bound(num_towers, cost, mem),
                      towers_per_domain=request.towers_per_domain)


register_partitioner("user_towers", user_towers)
