"""torchrec.models.dlrm.DLRM_DCN over a 4-table EmbeddingBagCollection.

Exercises: DLRM with the interaction replaced by InteractionDCNArch wrapping a
LowRankCrossNet (dcn_num_layers=2, dcn_low_rank_dim=4). Note the constructor
first builds the plain DLRM inter/over arch and then overwrites them.
Inputs: (dense_features [B, 13], sparse_features KeyedJaggedTensor keys f0..f3).
Output: logits [B, 1].
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.models.dlrm import DLRM_DCN
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from .torchrec_dlrm import DENSE_IN, EMB_DIM, make_ebc, make_inputs

__all__ = ["build", "make_inputs"]


def build(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, KeyedJaggedTensor]]:
    torch.manual_seed(seed)
    model = DLRM_DCN(
        embedding_bag_collection=make_ebc(),
        dense_in_features=DENSE_IN,
        dense_arch_layer_sizes=[16, EMB_DIM],
        over_arch_layer_sizes=[16, 1],
        dcn_num_layers=2,
        dcn_low_rank_dim=4,
    )
    return model, make_inputs(8, seed)
