"""Tower-module kind "identity" (the default): the tower's lookups, unchanged."""

from __future__ import annotations

import torch.nn as nn

from dmt_fx.compiler.tower_modules.base import IdentityTowerModule, TowerSpec, register_tower_module


def identity_tower(spec: TowerSpec) -> nn.Module:
    return IdentityTowerModule(spec.index, spec.features)


register_tower_module("identity", identity_tower, changes_model=False)
