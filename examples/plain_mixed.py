"""Plain PyTorch lookups of every kind `distribute` supports, with tables of mixed dims.

`build`: four lookups read by symbolic tracing, each table of its own dim and each output
projected to DIM by an `nn.Linear` after the lookup (dense: it trains data-parallel):
  - ``recent``: ``nn.EmbeddingBag(mode="mean")`` on ids ``[B, 3]`` (mean pooling, dim 4);
  - ``item``: ``nn.EmbeddingBag(mode="sum")`` with ``per_sample_weights [B, 4]`` (the
    weighted collection, dim 16);
  - ``user``: ``nn.Embedding(sparse=True)`` on ids ``[B, 1]`` (a ``[B, 1, 8]`` output, dim 8);
  - ``geo``: ``nn.EmbeddingBag(mode="sum", sparse=True)`` on ids ``[B, 2]`` (dim 12).
Inputs: (dense [B, 6], recent [B, 3], item [B, 4], item_weights [B, 4], user [B, 1],
geo [B, 2]). Output: logits [B, 1].

`build_small`: two tables (one unweighted bag, one weighted bag, dims 4 and 8): on 4x1 two
hosts hold no table of either collection. Every input is cut along dim 0, so the worker's
generic slicer fits both.
"""

from __future__ import annotations

import torch
from torch import nn

DENSE_IN: int = 6
DIM: int = 8  # the common dim every lookup is projected to
# name -> (rows, dim, ids per sample)
TABLES: dict[str, tuple[int, int, int]] = {"recent": (200, 4, 3), "item": (150, 16, 4), "user": (80, 8, 1),
                                           "geo": (60, 12, 2)}
SMALL: dict[str, tuple[int, int, int]] = {"recent": (50, 4, 3), "item": (40, 8, 4)}


class MixedPlain(nn.Module):
    def __init__(self, tables: dict[str, tuple[int, int, int]]) -> None:
        super().__init__()
        rows = {name: n for name, (n, _, _) in tables.items()}
        dims = {name: d for name, (_, d, _) in tables.items()}
        self.recent = nn.EmbeddingBag(rows["recent"], dims["recent"], mode="mean")
        self.item = nn.EmbeddingBag(rows["item"], dims["item"], mode="sum")
        self.user = nn.Embedding(rows["user"], dims["user"], sparse=True) if "user" in tables else None
        self.geo = nn.EmbeddingBag(rows["geo"], dims["geo"], mode="sum", sparse=True) if "geo" in tables else None
        self.proj = nn.ModuleDict({name: nn.Linear(d, DIM) for name, d in dims.items()})
        self.bottom = nn.Sequential(nn.Linear(DENSE_IN, 16), nn.ReLU(), nn.Linear(16, DIM), nn.ReLU())
        self.top = nn.Sequential(nn.Linear(DIM * (1 + len(tables)), 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, dense: torch.Tensor, recent: torch.Tensor, item: torch.Tensor, item_weights: torch.Tensor,
                *more: torch.Tensor) -> torch.Tensor:
        pooled = [self.proj["recent"](self.recent(recent)),
                  self.proj["item"](self.item(item, per_sample_weights=item_weights))]
        if self.user is not None:
            user, geo = more
            pooled.append(self.proj["user"](self.user(user).squeeze(1)))
            pooled.append(self.proj["geo"](self.geo(geo)))
        return self.top(torch.cat([self.bottom(dense), *pooled], dim=1))


def _inputs(tables: dict[str, tuple[int, int, int]], batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    ids = {name: torch.randint(0, n, (batch, per), generator=g) for name, (n, _, per) in tables.items()}
    weights = torch.rand(batch, tables["item"][2], generator=g)
    rest = [ids[name] for name in ("user", "geo") if name in ids]
    return (torch.rand(batch, DENSE_IN, generator=g), ids["recent"], ids["item"], weights, *rest)


def make_inputs(batch_size: int, seed: int) -> tuple[torch.Tensor, ...]:
    return _inputs(TABLES, batch_size, seed)


def build(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(seed)
    return MixedPlain(TABLES), make_inputs(8, 1000 + seed)


def make_small_inputs(batch_size: int, seed: int) -> tuple[torch.Tensor, ...]:
    return _inputs(SMALL, batch_size, seed)


def build_small(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(seed)
    return MixedPlain(SMALL), make_small_inputs(8, 1000 + seed)


build_small.make_inputs = make_small_inputs  # the worker prefers the factory's make_inputs
