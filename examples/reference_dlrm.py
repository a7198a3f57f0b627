"""Port of the reference DLRM (facebookresearch/dlrm, dlrm_s_pytorch.py, DLRM_Net).

Exercises the forward style users actually have: ``nn.ModuleList`` of ``nn.EmbeddingBag``
(sum), Python LISTS of per-table offsets/indices iterated with ``enumerate``, ``x.shape``
unpacking and index tensors rebuilt from Python loops over ``Z.shape`` on every call.
This intentionally defeats ``torch.fx.symbolic_trace``; keep it that way.
5 tables (dim 8), 13 dense features, bottom MLP 13-16-8, top MLP 23-16-1 + sigmoid.
Inputs: (dense_x [B, 13], lS_o: 5 offsets [B], lS_i: 5 indices). Output: probs [B, 1].
"""

from __future__ import annotations

import math

import torch
from torch import nn

M_SPA: int = 8
LN_EMB: list[int] = [100, 200, 50, 400, 1000]
LN_BOT: list[int] = [13, 16, M_SPA]


class DLRM_Net(nn.Module):
    def create_mlp(self, ln: list[int], sigmoid_layer: int) -> nn.Sequential:
        layers = nn.ModuleList()
        for i in range(0, len(ln) - 1):
            n, m = ln[i], ln[i + 1]
            LL = nn.Linear(int(n), int(m), bias=True)
            # reference init (numpy there, torch RNG here for seeding)
            with torch.no_grad():
                LL.weight.normal_(0.0, math.sqrt(2 / (m + n)))
                LL.bias.normal_(0.0, math.sqrt(1 / m))
            layers.append(LL)
            if i == sigmoid_layer:
                layers.append(nn.Sigmoid())
            else:
                layers.append(nn.ReLU())
        return torch.nn.Sequential(*layers)

    def create_emb(self, m: int, ln: list[int]) -> nn.ModuleList:
        emb_l = nn.ModuleList()
        for n in ln:
            EE = nn.EmbeddingBag(n, m, mode="sum", sparse=False)
            with torch.no_grad():
                EE.weight.uniform_(-math.sqrt(1 / n), math.sqrt(1 / n))
            emb_l.append(EE)
        return emb_l

    def __init__(
        self,
        m_spa: int,
        ln_emb: list[int],
        ln_bot: list[int],
        ln_top: list[int],
        arch_interaction_op: str = "dot",
        arch_interaction_itself: bool = False,
        sigmoid_bot: int = -1,
        sigmoid_top: int = -1,
        loss_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        self.arch_interaction_op = arch_interaction_op
        self.arch_interaction_itself = arch_interaction_itself
        self.loss_threshold = loss_threshold
        self.emb_l = self.create_emb(m_spa, ln_emb)
        self.bot_l = self.create_mlp(ln_bot, sigmoid_bot)
        self.top_l = self.create_mlp(ln_top, sigmoid_top)

    def apply_mlp(self, x: torch.Tensor, layers: nn.Sequential) -> torch.Tensor:
        return layers(x)

    def apply_emb(
        self, lS_o: list[torch.Tensor], lS_i: list[torch.Tensor], emb_l: nn.ModuleList
    ) -> list[torch.Tensor]:
        ly = []
        for k, sparse_index_group_batch in enumerate(lS_i):
            sparse_offset_group_batch = lS_o[k]
            E = emb_l[k]
            V = E(
                sparse_index_group_batch, sparse_offset_group_batch, per_sample_weights=None
            )
            ly.append(V)
        return ly

    def interact_features(
        self, x: torch.Tensor, ly: list[torch.Tensor]
    ) -> torch.Tensor:
        if self.arch_interaction_op == "dot":
            (batch_size, d) = x.shape
            T = torch.cat([x] + ly, dim=1).view((batch_size, -1, d))
            Z = torch.bmm(T, torch.transpose(T, 1, 2))
            _, ni, nj = Z.shape
            offset = 1 if self.arch_interaction_itself else 0
            li = torch.tensor([i for i in range(ni) for j in range(i + offset)])
            lj = torch.tensor([j for i in range(nj) for j in range(i + offset)])
            Zflat = Z[:, li, lj]
            R = torch.cat([x] + [Zflat], dim=1)
        elif self.arch_interaction_op == "cat":
            R = torch.cat([x] + ly, dim=1)
        else:
            raise ValueError(f"unsupported op {self.arch_interaction_op}")
        return R

    def forward(
        self, dense_x: torch.Tensor, lS_o: list[torch.Tensor], lS_i: list[torch.Tensor]
    ) -> torch.Tensor:
        x = self.apply_mlp(dense_x, self.bot_l)
        ly = self.apply_emb(lS_o, lS_i, self.emb_l)
        z = self.interact_features(x, ly)
        p = self.apply_mlp(z, self.top_l)
        if 0.0 < self.loss_threshold and self.loss_threshold < 1.0:
            z = torch.clamp(p, min=self.loss_threshold, max=(1.0 - self.loss_threshold))
        else:
            z = p
        return z


def make_inputs(
    batch_size: int, seed: int
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    dense_x = torch.rand(batch_size, LN_BOT[0], generator=g)
    lS_o: list[torch.Tensor] = []
    lS_i: list[torch.Tensor] = []
    for n in LN_EMB:
        lengths = torch.randint(0, 4, (batch_size,), generator=g)
        # offsets are bag starts (length B), as in the reference data loaders
        lS_o.append(torch.cumsum(lengths, 0) - lengths)
        lS_i.append(torch.randint(0, n, (int(lengths.sum()),), generator=g))
    return dense_x, lS_o, lS_i


def build(
    seed: int = 0,
) -> tuple[nn.Module, tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]]:
    torch.manual_seed(seed)
    num_fea = len(LN_EMB) + 1
    num_int = num_fea * (num_fea - 1) // 2 + LN_BOT[-1]
    ln_top = [num_int, 16, 1]
    model = DLRM_Net(
        m_spa=M_SPA,
        ln_emb=LN_EMB,
        ln_bot=LN_BOT,
        ln_top=ln_top,
        arch_interaction_op="dot",
        arch_interaction_itself=False,
        sigmoid_top=len(ln_top) - 2,
    )
    return model, make_inputs(8, seed)


def slice_inputs(
    inputs: tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]], start: int, stop: int
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Samples [start, stop) of a batch: the flat id lists are cut at their bag offsets."""
    dense_x, lS_o, lS_i = inputs
    offsets, indices = [], []
    for o, i in zip(lS_o, lS_i):
        lo = int(o[start]) if start < len(o) else i.numel()
        hi = int(o[stop]) if stop < len(o) else i.numel()
        offsets.append(o[start:stop] - lo)
        indices.append(i[lo:hi])
    return dense_x[start:stop], offsets, indices
