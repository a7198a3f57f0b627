"""Old location of the tower modules, kept so existing imports work: the kinds now live in
`dmt_fx.compiler.tower_modules` (one file each, registry `TOWER_MODULES`)."""

from __future__ import annotations

from dmt_fx.compiler.tower_modules import (
    TOWER_MODULES,
    CompressingTowerModule,
    IdentityTowerModule,
    TowerSpec,
    out_width,
    register_tower_module,
)

# The registry itself: it iterates and tests membership like the old tuple, and sees later registrations.
KINDS = TOWER_MODULES

__all__ = ["KINDS", "TOWER_MODULES", "CompressingTowerModule", "IdentityTowerModule", "TowerSpec", "out_width",
           "register_tower_module"]
