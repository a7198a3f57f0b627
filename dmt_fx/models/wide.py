"""The traffic benchmark's model: DLRM-like with a CONCAT interaction, 16 features of dim 16.

One table per feature, dense arch 13 -> 32 -> 16, over arch (16 + 256) -> 64 -> 1. With a
concat interaction a compressing tower module's output is W_t / c wide, exact for c = 2, 4, 8
whatever the plan, so cross-host bytes show the compression exactly.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

NUM_FEATURES = 16
DIM = 16
DENSE = 13
ROWS = [4_000, 3_000, 2_000, 2_000, 1_500, 1_000, 1_000, 800, 600, 500, 400, 300, 200, 100, 50, 24]


def _keys() -> list[str]:
    return [f"f{i}" for i in range(NUM_FEATURES)]


class WideModel(nn.Module):
    """DLRM-like, concat interaction: over(cat([dense_arch(x), ebc(kjt).values()]))."""

    def __init__(self) -> None:
        super().__init__()
        self.ebc = EmbeddingBagCollection(
            tables=[EmbeddingBagConfig(name=f"t{i}", embedding_dim=DIM, num_embeddings=ROWS[i],
                                       feature_names=[k]) for i, k in enumerate(_keys())],
            device=torch.device("cpu"))
        self.dense_arch = nn.Sequential(nn.Linear(DENSE, 32), nn.ReLU(), nn.Linear(32, DIM), nn.ReLU())
        self.over_arch = nn.Sequential(nn.Linear(DIM + NUM_FEATURES * DIM, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.ebc(sparse).values()
        return self.over_arch(torch.cat([self.dense_arch(dense), pooled], dim=1))


def make_inputs(batch_size: int, seed: int) -> tuple[torch.Tensor, KeyedJaggedTensor]:
    """Dense features and 1 id per bag (ids per feature ~ 1, as in the cost model), skewed."""
    g = torch.Generator().manual_seed(seed)
    keys = _keys()
    lengths = torch.ones(len(keys) * batch_size, dtype=torch.long)
    ids = torch.cat([(torch.rand(batch_size, generator=g) ** 2 * ROWS[i]).long() for i in range(len(keys))])
    return torch.randn(batch_size, DENSE, generator=g), KeyedJaggedTensor.from_lengths_sync(keys, ids, lengths)


def wide_model(seed: int = 0) -> tuple[WideModel, tuple]:
    torch.manual_seed(seed)
    return WideModel(), make_inputs(16, seed)
