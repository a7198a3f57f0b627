"""NVIDIA-style DLRM (DeepLearningExamples' layout): one ``nn.Embedding`` per categorical
field, each indexed by column i of one LongTensor ``[B, F]``, plus numerical features.

Bottom MLP 13-16-8 on the numerical features, 4 fields (dim 8, tables of 40-300 rows; the
last one ``sparse=True``), a dot interaction over the bottom output and the 4 embeddings
(pairwise products of the upper triangle, concatenated with the bottom output) and a top
MLP 18-16-1. Inputs: (numerical [B, 13] float, categorical [B, 4] long). Output: logits [B, 1].
"""

from __future__ import annotations

import torch
from torch import nn

NUM_DENSE: int = 13
DIM: int = 8
ROWS: list[int] = [120, 300, 40, 75]


class NvidiaDLRM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bottom_mlp = nn.Sequential(nn.Linear(NUM_DENSE, 16), nn.ReLU(), nn.Linear(16, DIM), nn.ReLU())
        self.embeddings = nn.ModuleList(
            [nn.Embedding(n, DIM, sparse=i == len(ROWS) - 1) for i, n in enumerate(ROWS)])
        vectors = len(ROWS) + 1
        self.top_mlp = nn.Sequential(nn.Linear(DIM + vectors * (vectors - 1) // 2, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, numerical: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        x = self.bottom_mlp(numerical)
        embedded = [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        batch = x.shape[0]
        vectors = torch.cat([x] + embedded, dim=1).view(batch, -1, DIM)
        products = torch.bmm(vectors, vectors.transpose(1, 2))
        rows, cols = torch.triu_indices(len(ROWS) + 1, len(ROWS) + 1, offset=1)
        return self.top_mlp(torch.cat([x, products[:, rows, cols]], dim=1))


def make_inputs(batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    numerical = torch.rand(batch_size, NUM_DENSE, generator=g)
    categorical = torch.stack([torch.randint(0, n, (batch_size,), generator=g) for n in ROWS], dim=1)
    return numerical, categorical


def build(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)
    return NvidiaDLRM(), make_inputs(8, seed)
