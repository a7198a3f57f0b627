"""Composite embeddings in the reference DLRM's style (facebookresearch/dlrm):
quotient-remainder bags (`qr_flag`: two tables per feature, `weight_q` read at id // c and
`weight_r` at id % c, combined by multiply or concatenation, functional `F.embedding_bag`
calls) and mixed-dimension bags (`md_flag`: a narrow table projected by a Linear after the
lookup). The DLRM here iterates the per-table lists with `enumerate`, as the reference does
(torch.fx cannot trace that: the export route captures it)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parameter import Parameter

from tests.harness.corpus.entry import Entry

DENSE, DIM, BATCH = 5, 8, 6
ROWS = [40, 90, 25]
COLLISIONS = 4


class QREmbeddingBag(nn.Module):
    """The reference DLRM's tricks/qr_embedding_bag.py, trimmed to what forward uses."""

    def __init__(self, num_categories: int, embedding_dim: int, num_collisions: int,
                 operation: str = "mult", mode: str = "sum") -> None:
        super().__init__()
        self.num_categories, self.num_collisions = num_categories, num_collisions
        self.operation, self.mode = operation, mode
        self.num_embeddings = [int(math.ceil(num_categories / num_collisions)), num_collisions]
        self.weight_q = Parameter(torch.empty(self.num_embeddings[0], embedding_dim))
        self.weight_r = Parameter(torch.empty(self.num_embeddings[1], embedding_dim))
        nn.init.uniform_(self.weight_q, math.sqrt(1 / num_categories))
        nn.init.uniform_(self.weight_r, math.sqrt(1 / num_categories))

    def forward(self, input: torch.Tensor, offsets: torch.Tensor | None = None,
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        input_q = (input / self.num_collisions).long()
        input_r = torch.remainder(input, self.num_collisions).long()
        embed_q = F.embedding_bag(input_q, self.weight_q, offsets, None, 2.0, False, self.mode, False,
                                  per_sample_weights)
        embed_r = F.embedding_bag(input_r, self.weight_r, offsets, None, 2.0, False, self.mode, False,
                                  per_sample_weights)
        if self.operation == "concat":
            return torch.cat((embed_q, embed_r), dim=1)
        if self.operation == "add":
            return embed_q + embed_r
        return embed_q * embed_r


class PrEmbeddingBag(nn.Module):
    """The reference DLRM's md_embedding_bag.py: a narrow table, projected to the base dim."""

    def __init__(self, num_embeddings: int, embedding_dim: int, base_dim: int) -> None:
        super().__init__()
        self.embs = nn.EmbeddingBag(num_embeddings, embedding_dim, mode="sum", sparse=False)
        self.proj = nn.Linear(embedding_dim, base_dim, bias=False) if embedding_dim < base_dim else nn.Identity()

    def forward(self, input: torch.Tensor, offsets: torch.Tensor | None = None,
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(self.embs(input, offsets=offsets, per_sample_weights=per_sample_weights))


class CompositeDLRM(nn.Module):
    """DLRM_Net's embedding and concatenation path with `qr_flag` or `md_flag` tables."""

    def __init__(self, seed: int, flag: str, operation: str = "mult") -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb_l = nn.ModuleList(self.create_emb(n, i, flag, operation) for i, n in enumerate(ROWS))
        width = 2 * DIM if operation == "concat" and flag == "qr" else DIM
        self.bot_l = nn.Sequential(nn.Linear(DENSE, DIM), nn.ReLU())
        self.top_l = nn.Sequential(nn.Linear(DIM + width * len(ROWS), 1), nn.Sigmoid())

    @staticmethod
    def create_emb(n: int, i: int, flag: str, operation: str) -> nn.Module:
        if flag == "qr":
            return QREmbeddingBag(n, DIM, COLLISIONS, operation=operation, mode="sum")
        return PrEmbeddingBag(n, DIM // 2 if i % 2 == 0 else DIM, DIM)  # md: every other table narrow

    def apply_emb(self, lS_o: list[torch.Tensor], lS_i: list[torch.Tensor]) -> list[torch.Tensor]:
        ly = []
        for k, sparse_index_group_batch in enumerate(lS_i):
            E = self.emb_l[k]
            ly.append(E(sparse_index_group_batch, lS_o[k], per_sample_weights=None))
        return ly

    def forward(self, dense_x: torch.Tensor, lS_o: list[torch.Tensor], lS_i: list[torch.Tensor]) -> torch.Tensor:
        x = self.bot_l(dense_x)
        return self.top_l(torch.cat([x] + self.apply_emb(lS_o, lS_i), dim=1))


class QRFields(nn.Module):
    """Quotient-remainder tables only, called on explicit tensors (torch.fx traces this one)."""

    def __init__(self, seed: int, operation: str) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a = QREmbeddingBag(ROWS[0], DIM, COLLISIONS, operation=operation)
        self.b = QREmbeddingBag(ROWS[1], DIM, COLLISIONS, operation=operation)
        width = 2 * DIM if operation == "concat" else DIM
        self.top = nn.Linear(DENSE + 2 * width, 1)

    def forward(self, dense: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.top(torch.cat([dense, self.a(a), self.b(b)], dim=1))


def make_inputs(batch: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    offsets, indices = [], []
    for n in ROWS:
        lengths = torch.randint(0, 4, (batch,), generator=g)
        offsets.append(torch.cumsum(lengths, 0) - lengths)
        indices.append(torch.randint(0, n, (int(lengths.sum()),), generator=g))
    return torch.rand(batch, DENSE, generator=g), offsets, indices


def _dlrm(flag: str, operation: str = "mult") -> Any:
    def build(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
        return CompositeDLRM(seed, flag, operation), make_inputs(BATCH, seed)
    return build


def _fields(operation: str) -> Any:
    def build(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
        g = torch.Generator().manual_seed(seed + 1)
        inputs = (torch.rand(BATCH, DENSE, generator=g), torch.randint(0, ROWS[0], (BATCH, 3), generator=g),
                  torch.randint(0, ROWS[1], (BATCH, 2), generator=g))
        return QRFields(seed, operation), inputs
    return build


COMPOSITE_ENTRIES: tuple[Entry, ...] = (
    Entry("QR DLRM (mult)", "quotient-remainder tables, multiply (export)", _dlrm("qr", "mult")),
    Entry("QR DLRM (concat)", "quotient-remainder tables, concatenate (export)", _dlrm("qr", "concat")),
    Entry("QR fields (mult)", "quotient-remainder only, explicit tensors", _fields("mult")),
    Entry("QR fields (concat)", "quotient-remainder only, explicit tensors", _fields("concat")),
    Entry("MD DLRM", "mixed dims: projection after the lookup (export)", _dlrm("md")),
)
