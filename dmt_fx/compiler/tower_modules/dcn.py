"""Tower-module kind "dcn": a DCN-v2 cross layer x1 = x0 * (W x0 + b) + x0, then a projection.

Initialisation: the cross weights and bias start at zero, so the cross layer starts as the
identity (x1 = x0) and the module as a plain projection (torch's nn.Linear defaults)."""

from __future__ import annotations

import torch
import torch.nn as nn

from dmt_fx.compiler.tower_modules.base import TowerSpec, register_tower_module


class DCNTower(nn.Module):
    def __init__(self, spec: TowerSpec) -> None:
        super().__init__()
        self.cross = nn.Linear(spec.in_width, spec.in_width)
        nn.init.zeros_(self.cross.weight)
        nn.init.zeros_(self.cross.bias)
        self.proj = nn.Linear(spec.in_width, spec.out_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x * self.cross(x) + x)


register_tower_module("dcn", DCNTower)
