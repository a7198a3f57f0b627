"""What CTR libraries hand us: batch objects of their own that are not pytree nodes.

- `DictBatchModel`: the batch a dict subclass with methods of its own (`batch.to(device)`),
  forward taking an int from a shape (symbolic tracing fails, torch.export captures it once
  dmt_fx registers the class as a pytree node).
- `MappingBatchModel`: the batch a `collections.abc.Mapping` over a private dict, built with
  keyword arguments.
- `FrozenBatchModel`: the batch a frozen dataclass, read field by field in a loop.
- `SparseJointDLRM`: NVIDIA DLRM's joint mode, its one joint `nn.Embedding` built with
  `sparse=True` gradients: split by field as the other joint tables are, the weight's
  gradient sparse as the original's.
- `PaddedTablesModel`: a feature processor's tables, every one with `padding_idx=0`: a sum
  bag and a mean bag on [B, L] ids, an nn.Embedding on [B] ids (id 0 is frequent).
"""

from __future__ import annotations

import collections.abc
import dataclasses
from typing import Any, Iterator

import torch
import torch.nn as nn

from tests.harness.corpus.entry import Entry
from tests.harness.corpus.joint import FIELD_ROWS, NvidiaJointDLRM
from tests.harness.corpus.joint import make_inputs as joint_inputs

BATCH, DENSE, DIM, ROWS, FIELDS = 6, 5, 8, 13, 4


class FeatureDict(dict):
    """A library's batch: a dict with methods (not a pytree node: pytree knows dict itself only)."""

    def to(self, device: torch.device | str) -> "FeatureDict":
        return FeatureDict({k: v.to(device) for k, v in self.items()})


class FeatureMapping(collections.abc.Mapping):
    """A library's batch: a read-only Mapping over its own storage."""

    def __init__(self, **features: torch.Tensor) -> None:
        self._features = dict(features)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._features[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._features)

    def __len__(self) -> int:
        return len(self._features)


@dataclasses.dataclass(frozen=True)
class FrozenBatch:
    dense: torch.Tensor
    ids: torch.Tensor


class _FieldsModel(nn.Module):
    """One nn.Embedding per field; the field count from the ids' shape (an int: export route)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fields = nn.ModuleList(nn.Embedding(ROWS, DIM) for _ in range(FIELDS))
        self.bottom = nn.Sequential(nn.Linear(DENSE, DIM), nn.ReLU())
        self.top = nn.Linear(DIM * (FIELDS + 1), 1)

    def head(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        n = int(ids.shape[1])
        embedded = [self.fields[i](ids[:, i]) for i in range(n)]
        return self.top(torch.cat([self.bottom(dense)] + embedded, dim=1))


class DictBatchModel(_FieldsModel):
    def forward(self, batch: FeatureDict) -> torch.Tensor:
        return self.head(batch["dense"], batch["ids"])


class MappingBatchModel(_FieldsModel):
    def forward(self, batch: FeatureMapping) -> torch.Tensor:
        return self.head(batch["dense"], batch["ids"])


class FrozenBatchModel(_FieldsModel):
    def forward(self, batch: FrozenBatch) -> torch.Tensor:
        return self.head(batch.dense, batch.ids)


class SparseJointDLRM(NvidiaJointDLRM):
    """NVIDIA's JointSparseEmbedding: `nn.Embedding(sum(sizes), dim, sparse=True)`."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        torch.manual_seed(seed + 1)
        self.embeddings.embedding = nn.Embedding(sum(FIELD_ROWS), self.embeddings.embedding.embedding_dim,
                                                 sparse=True)


PAD_LEN = 3  # ids per sample of the padded bags


class PaddedTablesModel(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.sum_bag = nn.EmbeddingBag(ROWS, DIM, mode="sum", padding_idx=0)
        self.mean_bag = nn.EmbeddingBag(ROWS, DIM, mode="mean", padding_idx=0)
        self.single = nn.Embedding(ROWS, DIM, padding_idx=0)
        self.bottom = nn.Sequential(nn.Linear(DENSE, DIM), nn.ReLU())
        self.top = nn.Linear(DIM * 4, 1)

    def forward(self, dense: torch.Tensor, bag_ids: torch.Tensor, mean_ids: torch.Tensor,
                one_ids: torch.Tensor) -> torch.Tensor:
        x = [self.bottom(dense), self.sum_bag(bag_ids), self.mean_bag(mean_ids), self.single(one_ids)]
        return self.top(torch.cat(x, dim=1))


def padded_inputs(batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """(dense, [B, L] ids, [B, L] ids, [B] ids); ids in [0, 4): about one in four is padding."""
    g = torch.Generator().manual_seed(seed + 13)
    ids = [torch.randint(0, 4, shape, generator=g) for shape in ((batch, PAD_LEN), (batch, PAD_LEN), (batch,))]
    return (torch.rand(batch, DENSE, generator=g), *ids)


def padded_tables_model(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    return PaddedTablesModel(seed), padded_inputs(BATCH, seed)


def features(seed: int, batch: int = BATCH) -> dict[str, torch.Tensor]:
    """{"dense": [B, DENSE], "ids": [B, FIELDS]}: one batch's tensors."""
    g = torch.Generator().manual_seed(seed + 11)
    return {"dense": torch.rand(batch, DENSE, generator=g), "ids": torch.randint(0, ROWS, (batch, FIELDS), generator=g)}


def dict_batch_model(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    return DictBatchModel(seed), (FeatureDict(features(seed)),)


def mapping_batch_model(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    return MappingBatchModel(seed), (FeatureMapping(**features(seed)),)


def frozen_batch_model(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    return FrozenBatchModel(seed), (FrozenBatch(**features(seed)),)


def sparse_joint_dlrm(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    return SparseJointDLRM(seed), joint_inputs(BATCH, seed)


CTR_INPUT_ENTRIES: tuple[Entry, ...] = (
    Entry("dict-subclass batch", "batch a dict subclass, not a pytree node (export)", dict_batch_model),
    Entry("Mapping batch", "batch a collections.abc.Mapping, not a pytree node (export)", mapping_batch_model),
    Entry("frozen dataclass batch", "batch a frozen dataclass, not a pytree node (export)", frozen_batch_model),
    Entry("padding_idx tables", "every table with padding_idx=0 (sum, mean bags; nn.Embedding)", padded_tables_model),
    Entry("sparse joint table", "NVIDIA DLRM joint mode: one nn.Embedding(sparse=True), split by field",
          sparse_joint_dlrm),
)
