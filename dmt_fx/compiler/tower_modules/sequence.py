"""Sequence tower-module kinds "seq_mean" and "seq_attention": each sequence feature reduced
inside its host, before the peer exchange (docs/runtime.md, "Sequence tower modules").

Per sequence feature f of the tower (dim d), on the rows the lookup returned for each
sample (a JaggedTensor: values [n, d], one length per sample):
  seq_mean       the mean of the sample's rows (zeros for an empty sequence);
  seq_attention  softmax(rows . q / sqrt(d)) weighted sum against a learned query q, which
                 starts at zero: the module starts as seq_mean, exactly, and learns from there;
then a projection to ceil(d / c): the identity at c = 1 (seq_mean then has no parameters,
and is the model's own mean where the model reduces by a mean), an nn.Linear (torch's
defaults) for c > 1. What crosses hosts is then (B, ceil(d / c)) per feature, not one row
per id. The tower's pooled features are not touched (they keep their exact path).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedTensor

from dmt_fx.compiler.tower_modules.base import TowerSpec, register_tower_module


def _segments(lengths: torch.Tensor, num_rows: int) -> torch.Tensor:
    """The sample of each row: [0]*l0 + [1]*l1 + ..."""
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths,
                                   output_size=num_rows)


class MeanPool(nn.Module):
    """Per-sample mean of a jagged [n, d] (0 rows: zeros, as a masked mean over padding)."""

    def forward(self, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.long()
        segments = _segments(lengths, values.shape[0])
        total = values.new_zeros(lengths.numel(), values.shape[1]).index_add(0, segments, values)
        return total / lengths.clamp(min=1).unsqueeze(1).to(values.dtype)


class AttentionPool(nn.Module):
    """Attention pooling against a learned query (zero at first: the mean)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(dim))
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.long()
        n = lengths.numel()
        segments = _segments(lengths, values.shape[0])
        scores = (values @ self.query) * self.scale
        peak = scores.new_full((n,), float("-inf")).scatter_reduce(0, segments, scores, "amax").detach()
        weights = torch.exp(scores - peak[segments])
        # a non-empty sample's weights sum to >= 1 (its top row weighs exp(0)); an empty one's to 0
        norm = scores.new_zeros(n).index_add(0, segments, weights).clamp(min=1.0)
        total = values.new_zeros(n, values.shape[1]).index_add(0, segments, values * weights.unsqueeze(1))
        return total / norm.unsqueeze(1)


class SequencePool(nn.Module):
    """One feature: pooling, then the projection to its cross-host width."""

    def __init__(self, pool: nn.Module, dim: int, width: int) -> None:
        super().__init__()
        self.pool = pool
        self.proj = nn.Identity() if width == dim else nn.Linear(dim, width)
        self.width = width

    def forward(self, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(values, lengths))


def reduced_width(dim: int, compression: int) -> int:
    """What a sequence feature of width `dim` sends across hosts: ceil(dim / c)."""
    return max(1, math.ceil(dim / compression))


class SequenceTower(nn.Module):
    """A tower's sequence features, each reduced to (B, ceil(d / c)); called in the graph on
    one collection's Dict[str, JaggedTensor] with the keys it holds of the tower."""

    def __init__(self, spec: TowerSpec, attention: bool) -> None:
        super().__init__()
        self.spec = spec
        self.features = spec.features
        self.widths = tuple(reduced_width(d, spec.compression) for d in spec.dims)
        self.pools = nn.ModuleList(SequencePool(AttentionPool(d) if attention else MeanPool(), d, w)
                                   for d, w in zip(spec.dims, self.widths))

    def pool_of(self, feature: str) -> SequencePool:
        return self.pools[self.features.index(feature)]

    def forward(self, jts: dict[str, JaggedTensor], keys: tuple[str, ...]) -> KeyedTensor:
        columns = [self.pool_of(k)(jts[k].values(), jts[k].lengths()) for k in keys]
        return KeyedTensor(keys=list(keys), length_per_key=[c.shape[1] for c in columns],
                           values=torch.cat(columns, dim=1))

    def extra_repr(self) -> str:
        return f"tower={self.spec.index}, features={len(self.features)}, widths={list(self.widths)}"


def seq_mean(spec: TowerSpec) -> nn.Module:
    return SequenceTower(spec, attention=False)


def seq_attention(spec: TowerSpec) -> nn.Module:
    return SequenceTower(spec, attention=True)


register_tower_module("seq_mean", seq_mean, sequences=True)
register_tower_module("seq_attention", seq_attention, sequences=True)
