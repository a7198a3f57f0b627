"""Tower modules: the per-tower dense module between the tower lookup and the cross-host hop."""

from __future__ import annotations

import torch.nn as nn


class IdentityTowerModule(nn.Module):
    """The default tower module: returns the tower's lookups unchanged (numerics-preserving)."""

    def __init__(self, tower: int, features: tuple[str, ...]) -> None:
        super().__init__()
        self.tower = tower
        self.features = features

    def forward(self, *lookups):
        return lookups

    def extra_repr(self) -> str:
        return f"tower={self.tower}, features={len(self.features)}"
