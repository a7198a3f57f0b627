"""The factorization-machine family as CTR libraries write it: narrow tables.

- `FMModel` (DeepCTR-Torch's shape): per-field linear tables of width 1 and per-field
  factor tables of width 10, a factorization-machine interaction, a dense linear part;
- `DeepFMModel` (torchfm's shape): one joint width-1 linear table with per-field offsets
  (a buffer), per-field width-3 factor tables, FM interaction and an MLP;
- `WideDeepModel`: per-field width-1 wide tables, width-3 and width-10 deep tables, MLP.
Inputs: (dense [B, DENSE], ids [B, F]); outputs [B, 1] logits.
- `CollectionsFM`: TorchRec collections with narrow tables: an EmbeddingBagCollection
  (widths 1, 3, 6) and a weighted one (width 1: the linear part of a weighted multi-hot field);
- `QRFM`: quotient-remainder pairs of width 3 (the reference DLRM's QR bags) and width 1.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from tests.harness.corpus.composite import QREmbeddingBag
from tests.harness.corpus.entry import Entry

DENSE = 4
FIELD_ROWS = (7, 3, 11, 5)


def make_inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 26)
    ids = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in FIELD_ROWS], dim=1)
    return torch.rand(batch, DENSE, generator=g), ids


def _tables(dim: int) -> nn.ModuleList:
    return nn.ModuleList(nn.Embedding(n, dim) for n in FIELD_ROWS)


def _fm(v: torch.Tensor) -> torch.Tensor:
    """Second-order interaction of [B, F, D] factors -> [B, 1]."""
    return 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1, keepdim=True)


class FMModel(nn.Module):
    def __init__(self, seed: int = 0, linear_dim: int = 1, factor_dim: int = 10) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = _tables(linear_dim)
        self.factors = _tables(factor_dim)
        self.dense = nn.Linear(DENSE, 1)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        first = torch.cat([t(ids[:, i]) for i, t in enumerate(self.linear)], dim=1).sum(1, keepdim=True)
        v = torch.stack([t(ids[:, i]) for i, t in enumerate(self.factors)], dim=1)
        return self.dense(dense) + first + _fm(v)


class JointLinear(nn.Module):
    """torchfm's FeaturesLinear: one width-1 table for all fields, offsets a buffer."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.fc = nn.Embedding(sum(FIELD_ROWS), dim)
        self.register_buffer("offsets", torch.tensor((0,) + FIELD_ROWS[:-1]).cumsum(0))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(ids + self.offsets).sum(1).sum(1, keepdim=True)


class DeepFMModel(nn.Module):
    def __init__(self, seed: int = 0, linear_dim: int = 1, factor_dim: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = JointLinear(linear_dim)
        self.factors = _tables(factor_dim)
        self.mlp = nn.Sequential(nn.Linear(factor_dim * len(FIELD_ROWS) + DENSE, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        v = torch.stack([t(ids[:, i]) for i, t in enumerate(self.factors)], dim=1)
        deep = self.mlp(torch.cat([dense, v.flatten(1)], dim=1))
        return self.linear(ids) + _fm(v) + deep


class WideDeepModel(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.wide = _tables(1)
        self.deep = nn.ModuleList(nn.Embedding(n, 3 if i % 2 else 10) for i, n in enumerate(FIELD_ROWS))
        width = sum(3 if i % 2 else 10 for i in range(len(FIELD_ROWS)))
        self.mlp = nn.Sequential(nn.Linear(width + DENSE, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        wide = torch.cat([t(ids[:, i]) for i, t in enumerate(self.wide)], dim=1).sum(1, keepdim=True)
        deep = torch.cat([dense] + [t(ids[:, i]) for i, t in enumerate(self.deep)], dim=1)
        return wide + self.mlp(deep)


KJT_WIDTHS = {"f0": 1, "f1": 3, "f2": 6}  # pooled TorchRec tables
KJT_ROWS, QR_ROWS = 9, 20


class CollectionsFM(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name=f"t_{k}", embedding_dim=d, num_embeddings=KJT_ROWS, feature_names=[k])
            for k, d in KJT_WIDTHS.items()])
        self.weighted = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name="t_w0", embedding_dim=1, num_embeddings=KJT_ROWS, feature_names=["w0"])],
            is_weighted=True)
        self.top = nn.Linear(DENSE + sum(KJT_WIDTHS.values()) + 1, 1)

    def forward(self, dense: torch.Tensor, kjt: KeyedJaggedTensor, weighted: KeyedJaggedTensor) -> torch.Tensor:
        parts = [dense, self.ebc(kjt).values(), self.weighted(weighted).values()]
        return self.top(torch.cat(parts, dim=1))


class QRFM(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.factors = QREmbeddingBag(QR_ROWS, 3, 4)
        self.linear = QREmbeddingBag(QR_ROWS, 1, 4)
        self.dense = nn.Linear(DENSE, 1)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        v = self.factors(ids)
        return self.dense(dense) + self.linear(ids) + (v * v).sum(1, keepdim=True)


def make_collection_inputs(batch: int, seed: int) -> tuple[Any, ...]:
    g = torch.Generator().manual_seed(seed + 27)

    def kjt(keys: list[str], weighted: bool) -> KeyedJaggedTensor:
        lengths = torch.randint(0, 3, (len(keys) * batch,), generator=g)
        ids = torch.randint(0, KJT_ROWS, (int(lengths.sum()),), generator=g)
        weights = torch.rand(len(ids), generator=g) if weighted else None
        return KeyedJaggedTensor.from_lengths_sync(keys, ids, lengths, weights=weights)

    return torch.rand(batch, DENSE, generator=g), kjt(list(KJT_WIDTHS), False), kjt(["w0"], True)


def collections_fm(seed: int = 0) -> tuple[nn.Module, tuple[Any, ...]]:
    return CollectionsFM(seed), make_collection_inputs(4, seed)


collections_fm.make_inputs = make_collection_inputs  # the worker prefers the factory's make_inputs


def make_qr_inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 28)
    return torch.rand(batch, DENSE, generator=g), torch.randint(0, QR_ROWS, (batch, 2), generator=g)


def qr_fm(seed: int = 0) -> tuple[nn.Module, tuple[Any, ...]]:
    return QRFM(seed), make_qr_inputs(4, seed)


qr_fm.make_inputs = make_qr_inputs


def fm(seed: int = 0) -> tuple[nn.Module, tuple[Any, ...]]:
    return FMModel(seed), make_inputs(4, seed)


def deepfm(seed: int = 0) -> tuple[nn.Module, tuple[Any, ...]]:
    return DeepFMModel(seed), make_inputs(4, seed)


def fm_aligned(seed: int = 0) -> tuple[nn.Module, tuple[Any, ...]]:
    """The FM with the widths the runtime pads to (4 and 12): the traffic comparison's baseline."""
    return FMModel(seed, 4, 12), make_inputs(4, seed)


def deepfm_aligned(seed: int = 0) -> tuple[nn.Module, tuple[Any, ...]]:
    return DeepFMModel(seed, 4, 4), make_inputs(4, seed)


def wide_deep(seed: int = 0) -> tuple[nn.Module, tuple[Any, ...]]:
    return WideDeepModel(seed), make_inputs(4, seed)


FM_ENTRIES: tuple[Entry, ...] = (
    Entry("FM (width 1 and 10)", "per-field width-1 linear and width-10 factor tables", fm),
    Entry("DeepFM (joint width 1)", "joint width-1 linear table with offsets, width-3 factors", deepfm),
    Entry("Wide&Deep (widths 1, 3, 10)", "per-field width-1 wide tables, width-3 and -10 deep tables", wide_deep),
    Entry("FM collections (widths 1, 3, 6)", "TorchRec pooled and weighted EBCs with narrow tables",
          collections_fm),
    Entry("QR FM (widths 3, 1)", "quotient-remainder pairs of width 3 and 1", qr_fm),
)
