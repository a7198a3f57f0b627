"""A plain nn.Module holding two EmbeddingBagCollections fed by two KJTs.

Exercises: more than one EBC and more than one KeyedJaggedTensor argument in a
single forward; ``user_ebc`` (u0 dim 4, u1 dim 8 -> 12 wide) and ``item_ebc``
(i0 dim 8, i1 dim 16, i2 dim 4 -> 28 wide, i1 uses MEAN pooling), with both
``KeyedTensor.values()`` concatenated after a dense MLP.
Inputs: (dense [B, 8], user_kjt keys u0,u1, item_kjt keys i0,i1,i2).
Output: logits [B, 1].
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from .torchrec_dlrm import make_kjt

DENSE_IN: int = 8
USER_KEYS: list[str] = ["u0", "u1"]
USER_ROWS: list[int] = [500, 80]
USER_DIMS: list[int] = [4, 8]
ITEM_KEYS: list[str] = ["i0", "i1", "i2"]
ITEM_ROWS: list[int] = [1000, 300, 50]
ITEM_DIMS: list[int] = [8, 16, 4]


def _ebc(keys: list[str], rows: list[int], dims: list[int]) -> EmbeddingBagCollection:
    tables = [
        EmbeddingBagConfig(
            name=f"t_{k}", embedding_dim=d, num_embeddings=n, feature_names=[k],
            pooling=PoolingType.MEAN if k == "i1" else PoolingType.SUM,
        )
        for k, n, d in zip(keys, rows, dims)
    ]
    return EmbeddingBagCollection(tables=tables)


class TwoCollectionsModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.user_ebc = _ebc(USER_KEYS, USER_ROWS, USER_DIMS)
        self.item_ebc = _ebc(ITEM_KEYS, ITEM_ROWS, ITEM_DIMS)
        self.dense_arch = nn.Sequential(
            nn.Linear(DENSE_IN, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU()
        )
        in_features = 8 + sum(USER_DIMS) + sum(ITEM_DIMS)
        self.over_arch = nn.Sequential(
            nn.Linear(in_features, 16), nn.ReLU(), nn.Linear(16, 1)
        )

    def forward(
        self,
        dense: torch.Tensor,
        user_kjt: KeyedJaggedTensor,
        item_kjt: KeyedJaggedTensor,
    ) -> torch.Tensor:
        dense_out = self.dense_arch(dense)
        user_kt = self.user_ebc(user_kjt)
        item_kt = self.item_ebc(item_kjt)
        features = torch.cat([dense_out, user_kt.values(), item_kt.values()], dim=1)
        return self.over_arch(features)


def make_inputs(
    batch_size: int, seed: int
) -> tuple[torch.Tensor, KeyedJaggedTensor, KeyedJaggedTensor]:
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(batch_size, DENSE_IN, generator=g)
    user_kjt = make_kjt(USER_KEYS, USER_ROWS, batch_size, g)
    item_kjt = make_kjt(ITEM_KEYS, ITEM_ROWS, batch_size, g)
    return dense, user_kjt, item_kjt


def build(
    seed: int = 0,
) -> tuple[nn.Module, tuple[torch.Tensor, KeyedJaggedTensor, KeyedJaggedTensor]]:
    torch.manual_seed(seed)
    return TwoCollectionsModel(), make_inputs(8, seed)
