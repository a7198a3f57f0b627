"""Plain PyTorch embedding model that torch.fx.symbolic_trace can trace.

Exercises: an ``nn.ModuleDict`` of three ``nn.EmbeddingBag`` modules with mixed
modes (``a``: sum/dim 8, ``b``: mean/dim 4, ``c``: sum/dim 4) taking
(indices, offsets) pairs as explicit per-table arguments (offsets are bag starts,
length B), plus one ``nn.Embedding`` (``d``, dim 8) on dense ids [B, 1]
squeezed to [B, 8]; concatenated with a dense MLP output and an over-arch.
Inputs: (dense [B, 8], ids_a, offsets_a, ids_b, offsets_b, ids_c, offsets_c,
ids_d [B, 1]). Output: logits [B, 1]. `slice_inputs` cuts a batch per rank (the flat
id lists at their offsets), for the distributed worker.
"""

from __future__ import annotations

import torch
from torch import nn

DENSE_IN: int = 8
# name -> (num_embeddings, dim, mode)
BAGS: dict[str, tuple[int, int, str]] = {
    "a": (300, 8, "sum"),
    "b": (100, 4, "mean"),
    "c": (60, 4, "sum"),
}
D_ROWS: int = 50
D_DIM: int = 8


class PlainEmbeddingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bags = nn.ModuleDict(
            {k: nn.EmbeddingBag(n, d, mode=mode) for k, (n, d, mode) in BAGS.items()}
        )
        self.emb_d = nn.Embedding(D_ROWS, D_DIM)
        self.dense_arch = nn.Sequential(
            nn.Linear(DENSE_IN, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU()
        )
        in_features = 8 + sum(d for _, d, _ in BAGS.values()) + D_DIM
        self.over_arch = nn.Sequential(
            nn.Linear(in_features, 16), nn.ReLU(), nn.Linear(16, 1)
        )

    def forward(
        self,
        dense: torch.Tensor,
        ids_a: torch.Tensor,
        offsets_a: torch.Tensor,
        ids_b: torch.Tensor,
        offsets_b: torch.Tensor,
        ids_c: torch.Tensor,
        offsets_c: torch.Tensor,
        ids_d: torch.Tensor,
    ) -> torch.Tensor:
        dense_out = self.dense_arch(dense)
        pooled_a = self.bags["a"](ids_a, offsets_a)
        pooled_b = self.bags["b"](ids_b, offsets_b)
        pooled_c = self.bags["c"](ids_c, offsets_c)
        emb_d = self.emb_d(ids_d).squeeze(1)
        features = torch.cat([dense_out, pooled_a, pooled_b, pooled_c, emb_d], dim=1)
        return self.over_arch(features)


def make_inputs(batch_size: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(batch_size, DENSE_IN, generator=g)
    args: list[torch.Tensor] = [dense]
    for n, _, _ in BAGS.values():
        lengths = torch.randint(0, 4, (batch_size,), generator=g)
        ids = torch.randint(0, n, (int(lengths.sum()),), generator=g)
        args += [ids, torch.cumsum(lengths, 0) - lengths]
    args.append(torch.randint(0, D_ROWS, (batch_size, 1), generator=g))
    return tuple(args)


def build(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(seed)
    return PlainEmbeddingModel(), make_inputs(8, seed)


def slice_inputs(inputs: tuple[torch.Tensor, ...], start: int, stop: int) -> tuple[torch.Tensor, ...]:
    """Samples [start, stop) of a batch: each bag's flat ids are cut at its offsets (bag
    starts, length B); the dense rows and the [B, 1] ids of ``d`` along dim 0."""
    dense, *pairs, ids_d = inputs
    out: list[torch.Tensor] = [dense[start:stop]]
    for ids, offsets in zip(pairs[0::2], pairs[1::2]):
        lo = int(offsets[start]) if start < len(offsets) else ids.numel()
        hi = int(offsets[stop]) if stop < len(offsets) else ids.numel()
        out += [ids[lo:hi], offsets[start:stop] - lo]
    return (*out, ids_d[start:stop])
