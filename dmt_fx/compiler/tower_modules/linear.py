"""Tower-module kind "linear": one projection of the tower's embeddings, W -> W / c.

Initialisation: torch's defaults for nn.Linear (Kaiming-uniform weights, uniform bias)."""

from __future__ import annotations

import torch
import torch.nn as nn

from dmt_fx.compiler.tower_modules.base import TowerSpec, register_tower_module


class LinearTower(nn.Module):
    def __init__(self, spec: TowerSpec) -> None:
        super().__init__()
        self.proj = nn.Linear(spec.in_width, spec.out_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


register_tower_module("linear", LinearTower)
