"""DCN-v2 as CTR libraries write it: per-field nn.Embedding tables and a dense
input concatenated into x0, a cross network and a deep MLP side by side on x0, their outputs
concatenated into the logit layer.

- `CrossNetMatrix`: the full-rank DCN-v2 cross layer, x_{l+1} = x0 * (W_l x_l + b_l) + x_l,
  with the (in, in) kernels as an nn.ParameterList and torch.matmul on (B, in, 1) columns.
- `CrossNetMix`: the low-rank mixture of experts (DCN-Mix): per layer and expert
  U (in, r), V (in, r), C (r, r), tanh between them, a linear gate per expert on x_l, and
  the experts' outputs mixed by the softmax of the gates.
These are the layers of the widely used CTR libraries, in our words; the deep part has
BatchNorm1d and Dropout, as theirs do.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.nn import init

from tests.harness.corpus.entry import Entry

BATCH, DENSE, DIM, FIELDS, ROWS, HIDDEN = 8, 3, 4, 4, 12, 8


class CrossNetMatrix(nn.Module):
    def __init__(self, in_features: int, layer_num: int = 2) -> None:
        super().__init__()
        self.layer_num = layer_num
        self.kernels = nn.ParameterList(
            nn.Parameter(init.xavier_normal_(torch.empty(in_features, in_features))) for _ in range(layer_num))
        self.bias = nn.ParameterList(nn.Parameter(torch.zeros(in_features, 1)) for _ in range(layer_num))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x_0 = inputs.unsqueeze(2)
        x_l = x_0
        for i in range(self.layer_num):
            xl_w = torch.matmul(self.kernels[i], x_l)
            x_l = x_0 * (xl_w + self.bias[i]) + x_l
        return torch.squeeze(x_l, dim=2)


class CrossNetMix(nn.Module):
    def __init__(self, in_features: int, low_rank: int = 2, num_experts: int = 3, layer_num: int = 2) -> None:
        super().__init__()
        self.layer_num, self.num_experts = layer_num, num_experts

        def stacked(*shape: int) -> nn.ParameterList:
            return nn.ParameterList(nn.Parameter(init.xavier_normal_(torch.empty(num_experts, *shape)))
                                    for _ in range(layer_num))
        self.U_list = stacked(in_features, low_rank)
        self.V_list = stacked(in_features, low_rank)
        self.C_list = stacked(low_rank, low_rank)
        self.gating = nn.ModuleList(nn.Linear(in_features, 1, bias=False) for _ in range(num_experts))
        self.bias = nn.ParameterList(nn.Parameter(torch.zeros(in_features, 1)) for _ in range(layer_num))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x_0 = inputs.unsqueeze(2)  # (B, in, 1)
        x_l = x_0
        for i in range(self.layer_num):
            experts, gates = [], []
            for expert in range(self.num_experts):
                gates.append(self.gating[expert](x_l.squeeze(2)))
                v_x = torch.tanh(torch.matmul(self.V_list[i][expert].t(), x_l))
                v_x = torch.tanh(torch.matmul(self.C_list[i][expert], v_x))
                uv_x = torch.matmul(self.U_list[i][expert], v_x)
                experts.append((x_0 * (uv_x + self.bias[i])).squeeze(2))
            mixed = torch.matmul(torch.stack(experts, 2), torch.stack(gates, 1).softmax(1))
            x_l = mixed + x_l
        return x_l.squeeze(2)


class DCNv2(nn.Module):
    def __init__(self, seed: int, cross: str = "mix") -> None:
        super().__init__()
        torch.manual_seed(seed)
        width = DENSE + FIELDS * DIM
        self.embedding_dict = nn.ModuleDict({f"C{i}": nn.Embedding(ROWS, DIM) for i in range(FIELDS)})
        self.crossnet = CrossNetMix(width) if cross == "mix" else CrossNetMatrix(width)
        self.dnn = nn.Sequential(nn.Linear(width, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU(), nn.Dropout(0.2))
        self.dnn_linear = nn.Linear(width + HIDDEN, 1, bias=False)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        sparse = [self.embedding_dict[f"C{i}"](ids[:, i]) for i in range(FIELDS)]
        dnn_input = torch.cat([torch.cat(sparse, dim=-1), dense], dim=-1)
        stack = torch.cat((self.crossnet(dnn_input), self.dnn(dnn_input)), dim=-1)
        return self.dnn_linear(stack)


def make_inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 23)
    return torch.rand(batch, DENSE, generator=g), torch.randint(0, ROWS, (batch, FIELDS), generator=g)


def _build(cross: str, training: bool):
    def build(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
        return DCNv2(seed, cross).train(training), make_inputs(BATCH, seed)
    return build


DCN_ENTRIES: tuple[Entry, ...] = (
    Entry("DCN-v2 low-rank experts", "CrossNetMix (low-rank MoE) + BN/Dropout MLP; train mode", _build("mix", True)),
    Entry("DCN-v2 low-rank experts (eval)", "the same, captured in eval mode", _build("mix", False)),
    Entry("DCN-v2 full-rank", "CrossNet matrix kernels + BN/Dropout MLP; train mode", _build("matrix", True)),
)
