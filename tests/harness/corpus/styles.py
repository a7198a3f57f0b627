"""Small models written here, one per input style real code uses: a batch
dataclass, a dict, one float tensor with id columns next to dense ones, self-attention over
the embeddings (AutoInt style), and models without any dense input (a factorization machine
on a LongTensor [B, F], two-tower retrieval on a KJT alone)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn as nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from tests.harness.corpus.entry import Entry
from tests.harness.corpus.torchrec_models import BATCH, DENSE, DIM, KEYS, ROWS, dense, ebc, kjt

FIELDS = 4


def _ids(seed: int, fields: int = FIELDS) -> torch.Tensor:
    return torch.randint(0, ROWS, (BATCH, fields), generator=torch.Generator().manual_seed(seed + 2))


@dataclasses.dataclass
class ClickBatch:
    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    labels: torch.Tensor


class DataclassModel(nn.Module):
    """forward(batch) -> (loss, logits), the way training scripts hand batches over."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.ebc = ebc(seed)
        self.bottom = nn.Sequential(nn.Linear(DENSE, DIM), nn.ReLU())
        self.top = nn.Linear(DIM * (FIELDS + 1), 1)

    def forward(self, batch: ClickBatch) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.ebc(batch.sparse)
        x = torch.cat([self.bottom(batch.dense)] + [pooled[k] for k in KEYS], dim=1)
        logits = self.top(x).squeeze(-1)
        return nn.functional.binary_cross_entropy_with_logits(logits, batch.labels.float()), logits


class DictModel(nn.Module):
    """forward({"dense": ..., "ids": LongTensor [B, F]}): one nn.Embedding per field."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fields = nn.ModuleList(nn.Embedding(ROWS, DIM) for _ in range(FIELDS))
        self.bottom = nn.Linear(DENSE, DIM)
        self.top = nn.Linear(DIM * (FIELDS + 1), 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["ids"]
        embedded = [emb(ids[:, i]) for i, emb in enumerate(self.fields)]
        return self.top(torch.cat([self.bottom(batch["dense"])] + embedded, dim=1))


class FloatColumnsModel(nn.Module):
    """One float tensor [B, DENSE + F]: dense values, then ids cast to long in forward."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.bags = nn.ModuleList(nn.EmbeddingBag(ROWS, DIM, mode="sum") for _ in range(FIELDS))
        self.bottom = nn.Linear(DENSE, DIM)
        self.top = nn.Linear(DIM * (FIELDS + 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x[:, DENSE:].long()
        embedded = [bag(ids[:, i:i + 1]) for i, bag in enumerate(self.bags)]
        return self.top(torch.cat([self.bottom(x[:, :DENSE])] + embedded, dim=1))


class AttentionModel(nn.Module):
    """AutoInt style: multi-head self-attention over [dense, field embeddings]."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.ebc = ebc(seed)
        self.bottom = nn.Linear(DENSE, DIM)
        self.attention = nn.MultiheadAttention(DIM, 2, batch_first=True)
        self.top = nn.Linear(DIM * (FIELDS + 1), 1)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.ebc(sparse)
        tokens = torch.stack([self.bottom(dense)] + [pooled[k] for k in KEYS], dim=1)
        attended, _ = self.attention(tokens, tokens, tokens)
        return self.top((attended + tokens).flatten(1))


class FactorizationMachine(nn.Module):
    """No dense input: ids LongTensor [B, F]; first-order weights plus pairwise dots."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.vectors = nn.ModuleList(nn.Embedding(ROWS, DIM) for _ in range(FIELDS))
        self.weights = nn.ModuleList(nn.Embedding(ROWS, 1) for _ in range(FIELDS))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        v = torch.stack([emb(ids[:, i]) for i, emb in enumerate(self.vectors)], dim=1)
        linear = sum(w(ids[:, i]) for i, w in enumerate(self.weights))
        pairs = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1, keepdim=True)
        return linear + pairs + self.bias


class TwoTower(nn.Module):
    """No dense input: retrieval scores from a user and an item collection on one KJT."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        def tables(prefix: str, keys: list[str]) -> list[EmbeddingBagConfig]:
            return [EmbeddingBagConfig(name=f"{prefix}_{k}", embedding_dim=DIM, num_embeddings=ROWS,
                                       feature_names=[k]) for k in keys]
        self.users = EmbeddingBagCollection(tables=tables("user", KEYS[:2]))
        self.items = EmbeddingBagCollection(tables=tables("item", KEYS[2:]))
        self.user_mlp, self.item_mlp = nn.Linear(2 * DIM, DIM), nn.Linear(2 * DIM, DIM)

    def forward(self, sparse: KeyedJaggedTensor) -> torch.Tensor:
        user = self.user_mlp(self.users(sparse).values())
        item = self.item_mlp(self.items(sparse).values())
        return (user * item).sum(1)


class ConstantsModel(nn.Module):
    """A DLRM dot interaction written inline with its index pairs as a non-persistent buffer
    and a plain tensor attribute (what a copied torchrec InteractionArch has): constants the
    tracer turns into buffers, which must not reach the state dict."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.ebc = ebc(seed)
        self.bottom = nn.Linear(DENSE, DIM)
        self.register_buffer("triu", torch.triu_indices(FIELDS + 1, FIELDS + 1, offset=1), persistent=False)
        self.scale = torch.tensor(0.5)
        self.top = nn.Linear(DIM + (FIELDS + 1) * FIELDS // 2, 1)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.ebc(sparse)
        x = self.bottom(dense)
        v = torch.stack([x] + [pooled[k] for k in KEYS], dim=1)
        dots = torch.bmm(v, v.transpose(1, 2))[:, self.triu[0], self.triu[1]] * self.scale
        return self.top(torch.cat([x, dots], dim=1))


@dataclasses.dataclass
class ListBatch:
    """The reference DLRM's inputs in one object: dense, per-table offsets and ids."""

    dense: torch.Tensor
    offsets: list[torch.Tensor]
    ids: list[torch.Tensor]


class ListBatchModel(nn.Module):
    """Zips its bags with the batch's lists: symbolic tracing fails, torch.export captures it."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.bags = nn.ModuleList(nn.EmbeddingBag(ROWS, DIM, mode="sum") for _ in range(FIELDS))
        self.bottom = nn.Linear(DENSE, DIM)
        self.top = nn.Linear(DIM * (FIELDS + 1), 1)

    def forward(self, batch: ListBatch) -> torch.Tensor:
        pooled = [bag(ids, offsets) for bag, ids, offsets in zip(self.bags, batch.ids, batch.offsets)]
        return self.top(torch.cat([self.bottom(batch.dense)] + pooled, dim=1))


class ShapeColumnsModel(FloatColumnsModel):
    """One float tensor with id columns, and an int taken from its shape: captured by export."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, width = x.shape
        ids = x[:, DENSE:].long()
        embedded = [self.bags[i](ids[:, i:i + 1]) for i in range(width - DENSE)]
        return self.top(torch.cat([self.bottom(x[:, :DENSE])] + embedded, dim=1))


def _labels(seed: int) -> torch.Tensor:
    return torch.randint(0, 2, (BATCH,), generator=torch.Generator().manual_seed(seed))


def dataclass_model(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    return DataclassModel(seed), (ClickBatch(dense(seed), kjt(seed), _labels(seed)),)


def dict_model(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    return DictModel(seed), ({"dense": dense(seed), "ids": _ids(seed)},)


def float_columns_model(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    return FloatColumnsModel(seed), (torch.cat([dense(seed), _ids(seed).float()], dim=1),)


def attention_model(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    return AttentionModel(seed).eval(), (dense(seed), kjt(seed))  # eval: attention dropout off


def factorization_machine(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    return FactorizationMachine(seed), (_ids(seed),)


def constants_model(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    return ConstantsModel(seed), (dense(seed), kjt(seed))


def list_batch_model(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    g = torch.Generator().manual_seed(seed + 3)
    lengths = [torch.randint(0, 4, (BATCH,), generator=g) for _ in range(FIELDS)]
    offsets = [torch.cat([torch.zeros(1, dtype=torch.long), n.cumsum(0)[:-1]]) for n in lengths]
    ids = [torch.randint(0, ROWS, (int(n.sum()),), generator=g) for n in lengths]
    return ListBatchModel(seed), (ListBatch(dense(seed), offsets, ids),)


def shape_columns_model(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    return ShapeColumnsModel(seed), (torch.cat([dense(seed), _ids(seed).float()], dim=1),)


def two_tower(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    return TwoTower(seed), (kjt(seed),)


STYLE_ENTRIES: tuple[Entry, ...] = (
    Entry("DataclassModel", "batch dataclass", dataclass_model),
    Entry("DictModel", "dict input, LongTensor [B, F]", dict_model),
    Entry("FloatColumnsModel", "one float tensor: dense and id columns", float_columns_model),
    Entry("AttentionModel", "attention over embeddings", attention_model),
    Entry("FactorizationMachine", "no dense input, LongTensor [B, F]", factorization_machine),
    Entry("TwoTower", "no dense input, KJT alone", two_tower),
    Entry("ListBatchModel", "batch dataclass of per-table lists (export)", list_batch_model),
    Entry("ShapeColumnsModel", "one float tensor, int from its shape (export)", shape_columns_model),
    Entry("ConstantsModel", "index constants in forward (non-persistent buffer)", constants_model),
)
