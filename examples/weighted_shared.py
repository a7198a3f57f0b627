"""Weighted EmbeddingBagCollection with a table shared by two features.

Exercises: ``EmbeddingBagCollection(is_weighted=True)`` (per-sample weights taken
from ``kjt.weights()``, SUM pooling), one table ``t_shared`` (dim 8) serving two
features ``f_a`` and ``f_b``, two more tables of different dims (``t_c`` dim 4,
``t_d`` dim 16), and direct use of ``KeyedTensor.values()`` ([B, 36]).
Inputs: (dense [B, 8], kjt KeyedJaggedTensor with weights, keys f_a, f_b, f_c, f_d).
Output: logits [B, 1].
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from .torchrec_dlrm import make_kjt

DENSE_IN: int = 8
KEYS: list[str] = ["f_a", "f_b", "f_c", "f_d"]
# ids of f_a and f_b both index the shared table (400 rows).
NUM_EMBEDDINGS: list[int] = [400, 400, 60, 1000]


class WeightedSharedModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        tables = [
            EmbeddingBagConfig(
                name="t_shared", embedding_dim=8, num_embeddings=400,
                feature_names=["f_a", "f_b"],
            ),
            EmbeddingBagConfig(
                name="t_c", embedding_dim=4, num_embeddings=60, feature_names=["f_c"]
            ),
            EmbeddingBagConfig(
                name="t_d", embedding_dim=16, num_embeddings=1000, feature_names=["f_d"]
            ),
        ]
        self.ebc = EmbeddingBagCollection(tables=tables, is_weighted=True)
        self.dense_arch = nn.Sequential(
            nn.Linear(DENSE_IN, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU()
        )
        sparse_width = 8 + 8 + 4 + 16
        self.over_arch = nn.Sequential(
            nn.Linear(8 + sparse_width, 16), nn.ReLU(), nn.Linear(16, 1)
        )

    def forward(self, dense: torch.Tensor, kjt: KeyedJaggedTensor) -> torch.Tensor:
        dense_out = self.dense_arch(dense)
        kt = self.ebc(kjt)
        return self.over_arch(torch.cat([dense_out, kt.values()], dim=1))


def make_inputs(batch_size: int, seed: int) -> tuple[torch.Tensor, KeyedJaggedTensor]:
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(batch_size, DENSE_IN, generator=g)
    return dense, make_kjt(KEYS, NUM_EMBEDDINGS, batch_size, g, weighted=True)


def build(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, KeyedJaggedTensor]]:
    torch.manual_seed(seed)
    return WeightedSharedModel(), make_inputs(8, seed)
