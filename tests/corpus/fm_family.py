"""The factorization-machine family as CTR libraries write it (issue 26): narrow tables.

- `FMModel` (DeepCTR-Torch's shape): per-field linear tables of width 1 and per-field
  factor tables of width 10, a factorization-machine interaction, a dense linear part;
- `DeepFMModel` (torchfm's shape): one joint width-1 linear table with per-field offsets
  (a buffer), per-field width-3 factor tables, FM interaction and an MLP;
- `WideDeepModel`: per-field width-1 wide tables, width-3 and width-10 deep tables, MLP.
Inputs: (dense [B, DENSE], ids [B, F]); outputs [B, 1] logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from tests.corpus.entry import Entry

DENSE = 4
FIELD_ROWS = (7, 3, 11, 5)


def make_inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 26)
    ids = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in FIELD_ROWS], dim=1)
    return torch.rand(batch, DENSE, generator=g), ids


def _tables(dim: int) -> nn.ModuleList:
    return nn.ModuleList(nn.Embedding(n, dim) for n in FIELD_ROWS)


def _fm(v: torch.Tensor) -> torch.Tensor:
    """Second-order interaction of [B, F, D] factors -> [B, 1]."""
    return 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1, keepdim=True)


class FMModel(nn.Module):
    def __init__(self, seed: int = 0, linear_dim: int = 1, factor_dim: int = 10) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = _tables(linear_dim)
        self.factors = _tables(factor_dim)
        self.dense = nn.Linear(DENSE, 1)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        first = torch.cat([t(ids[:, i]) for i, t in enumerate(self.linear)], dim=1).sum(1, keepdim=True)
        v = torch.stack([t(ids[:, i]) for i, t in enumerate(self.factors)], dim=1)
        return self.dense(dense) + first + _fm(v)


class JointLinear(nn.Module):
    """torchfm's FeaturesLinear: one width-1 table for all fields, offsets a buffer."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.fc = nn.Embedding(sum(FIELD_ROWS), dim)
        self.register_buffer("offsets", torch.tensor((0,) + FIELD_ROWS[:-1]).cumsum(0))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(ids + self.offsets).sum(1).sum(1, keepdim=True)


class DeepFMModel(nn.Module):
    def __init__(self, seed: int = 0, linear_dim: int = 1, factor_dim: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = JointLinear(linear_dim)
        self.factors = _tables(factor_dim)
        self.mlp = nn.Sequential(nn.Linear(factor_dim * len(FIELD_ROWS) + DENSE, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        v = torch.stack([t(ids[:, i]) for i, t in enumerate(self.factors)], dim=1)
        deep = self.mlp(torch.cat([dense, v.flatten(1)], dim=1))
        return self.linear(ids) + _fm(v) + deep


class WideDeepModel(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.wide = _tables(1)
        self.deep = nn.ModuleList(nn.Embedding(n, 3 if i % 2 else 10) for i, n in enumerate(FIELD_ROWS))
        width = sum(3 if i % 2 else 10 for i in range(len(FIELD_ROWS)))
        self.mlp = nn.Sequential(nn.Linear(width + DENSE, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        wide = torch.cat([t(ids[:, i]) for i, t in enumerate(self.wide)], dim=1).sum(1, keepdim=True)
        deep = torch.cat([dense] + [t(ids[:, i]) for i, t in enumerate(self.deep)], dim=1)
        return wide + self.mlp(deep)


def fm(seed: int = 0) -> tuple[nn.Module, tuple[Any, ...]]:
    return FMModel(seed), make_inputs(4, seed)


def deepfm(seed: int = 0) -> tuple[nn.Module, tuple[Any, ...]]:
    return DeepFMModel(seed), make_inputs(4, seed)


def fm_aligned(seed: int = 0) -> tuple[nn.Module, tuple[Any, ...]]:
    """The FM with the widths the runtime pads to (4 and 12): the traffic comparison's baseline."""
    return FMModel(seed, 4, 12), make_inputs(4, seed)


def deepfm_aligned(seed: int = 0) -> tuple[nn.Module, tuple[Any, ...]]:
    return DeepFMModel(seed, 4, 4), make_inputs(4, seed)


def wide_deep(seed: int = 0) -> tuple[nn.Module, tuple[Any, ...]]:
    return WideDeepModel(seed), make_inputs(4, seed)


FM_ENTRIES: tuple[Entry, ...] = (
    Entry("FM (width 1 and 10)", "per-field width-1 linear and width-10 factor tables", fm),
    Entry("DeepFM (joint width 1)", "joint width-1 linear table with offsets, width-3 factors", deepfm),
    Entry("Wide&Deep (widths 1, 3, 10)", "per-field width-1 wide tables, width-3 and -10 deep tables", wide_deep),
)
