"""torchrec.models.dlrm.DLRM over a 4-table EmbeddingBagCollection.

Exercises: the stock torchrec DLRM (SparseArch -> KeyedTensor.to_dict, dot
InteractionArch with triu_indices buffer, DenseArch/OverArch MLPs) fed by a
KeyedJaggedTensor with one feature per table (keys f0..f3, all dim 8).
Inputs: (dense_features [B, 13], sparse_features KeyedJaggedTensor).
Output: logits [B, 1].
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

DENSE_IN: int = 13
EMB_DIM: int = 8
KEYS: list[str] = ["f0", "f1", "f2", "f3"]
NUM_EMBEDDINGS: list[int] = [100, 200, 300, 500]


def make_ebc() -> EmbeddingBagCollection:
    tables = [
        EmbeddingBagConfig(
            name=f"t_{key}",
            embedding_dim=EMB_DIM,
            num_embeddings=n,
            feature_names=[key],
        )
        for key, n in zip(KEYS, NUM_EMBEDDINGS)
    ]
    return EmbeddingBagCollection(tables=tables)


def make_kjt(
    keys: list[str],
    num_embeddings: list[int],
    batch_size: int,
    g: torch.Generator,
    weighted: bool = False,
) -> KeyedJaggedTensor:
    """Random KJT: per-key lengths in 0..3 (empty bags included), ids in range.

    ``num_embeddings[i]`` bounds the ids of ``keys[i]``. Shared by other examples.
    """
    lengths = torch.randint(0, 4, (len(keys), batch_size), generator=g)
    values = torch.cat(
        [
            torch.randint(0, n, (int(lengths[i].sum()),), generator=g)
            for i, n in enumerate(num_embeddings)
        ]
    )
    weights = torch.rand(values.numel(), generator=g) if weighted else None
    return KeyedJaggedTensor.from_lengths_sync(
        keys=keys, values=values, lengths=lengths.reshape(-1), weights=weights
    )


def make_inputs(batch_size: int, seed: int) -> tuple[torch.Tensor, KeyedJaggedTensor]:
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(batch_size, DENSE_IN, generator=g)
    return dense, make_kjt(KEYS, NUM_EMBEDDINGS, batch_size, g)


def build(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, KeyedJaggedTensor]]:
    torch.manual_seed(seed)
    model = DLRM(
        embedding_bag_collection=make_ebc(),
        dense_in_features=DENSE_IN,
        dense_arch_layer_sizes=[16, EMB_DIM],
        over_arch_layer_sizes=[16, 1],
    )
    return model, make_inputs(8, seed)
