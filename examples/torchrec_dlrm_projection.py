"""torchrec.models.dlrm.DLRM_Projection over a 4-table EmbeddingBagCollection.

Exercises: DLRM whose interaction is InteractionProjectionArch: two DenseArch
branches over the flattened [dense | sparse] features ((F + 1) * D = 40 inputs),
reshaped to [B, 2, D] and [B, D, 3] and multiplied with bmm (F1 * F2 = 6
interaction terms). Branch output sizes must be multiples of D.
Inputs: (dense_features [B, 13], sparse_features KeyedJaggedTensor keys f0..f3).
Output: logits [B, 1].
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.models.dlrm import DLRM_Projection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from .torchrec_dlrm import DENSE_IN, EMB_DIM, make_ebc, make_inputs

__all__ = ["build", "make_inputs"]


def build(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, KeyedJaggedTensor]]:
    torch.manual_seed(seed)
    model = DLRM_Projection(
        embedding_bag_collection=make_ebc(),
        dense_in_features=DENSE_IN,
        dense_arch_layer_sizes=[16, EMB_DIM],
        over_arch_layer_sizes=[16, 1],
        interaction_branch1_layer_sizes=[16, 2 * EMB_DIM],
        interaction_branch2_layer_sizes=[16, 3 * EMB_DIM],
    )
    return model, make_inputs(8, seed)
