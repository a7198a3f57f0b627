"""Tower-module kinds, one file each; `TOWER_MODULES` is the registry (see base.py).

Add a kind with `register_tower_module(name, factory)` from your code, or as a new file here
(it is imported below with the others)."""

from __future__ import annotations

from dmt_fx.compiler.plugins import import_all
from dmt_fx.compiler.tower_modules.base import (
    TOWER_MODULES,
    CompressingTowerModule,
    IdentityTowerModule,
    TowerModuleFactory,
    TowerModuleKind,
    TowerSpec,
    out_width,
    register_tower_module,
    tower_module_kind,
)

__all__ = ["TOWER_MODULES", "CompressingTowerModule", "IdentityTowerModule", "TowerModuleFactory",
           "TowerModuleKind", "TowerSpec", "out_width", "register_tower_module", "tower_module_kind"]

import_all(__name__, __path__)
