"""Joint tables: one embedding weight for all fields, indexed with
per-field row offsets added in forward.

- `TorchFMModel`: torchfm's FeaturesLinear + FeaturesEmbedding + a factorization machine,
  as torchfm writes them (offsets a numpy array, `x + x.new_tensor(self.offsets).unsqueeze(0)`;
  the tracer reads the array as a tensor constant): two joint tables.
- `NvidiaJointDLRM`: NVIDIA DLRM's JointEmbedding (offsets a buffer, `offsets[:-1]`), with a
  dense bottom MLP and an int taken from the ids' shape (captured by torch.export);
  `SymbolicJointDLRM` the same written for torch.fx.
- `LearnedOffsetsModel` / `DataOffsetsModel`: offsets that are a parameter, or computed from
  the batch: the table stays whole and the plan says why.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from tests.harness.corpus.entry import Entry

BATCH, DENSE, DIM = 6, 5, 8
FIELD_ROWS = (7, 3, 11, 5, 9)  # rows per field: unequal, so a split can balance only by field


def field_ids(seed: int, batch: int = BATCH, rows: tuple[int, ...] = FIELD_ROWS) -> torch.Tensor:
    """LongTensor [B, F]: each field's ids in its own range [0, rows_f)."""
    g = torch.Generator().manual_seed(seed + 5)
    return torch.stack([torch.randint(0, n, (batch,), generator=g) for n in rows], dim=1)


def _offsets(rows: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sum(rows[:i]) for i in range(len(rows)))


class FeaturesEmbedding(nn.Module):
    """torchfm's: offsets a numpy array turned into a tensor in forward."""

    def __init__(self, field_dims: tuple[int, ...], embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(sum(field_dims), embed_dim)
        self.offsets = np.array((0, *np.cumsum(field_dims)[:-1]), dtype=np.int64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + x.new_tensor(self.offsets).unsqueeze(0)
        return self.embedding(x)


class FeaturesLinear(nn.Module):
    def __init__(self, field_dims: tuple[int, ...], output_dim: int = 1) -> None:
        super().__init__()
        self.fc = nn.Embedding(sum(field_dims), output_dim)
        self.bias = nn.Parameter(torch.zeros((output_dim,)))
        self.offsets = np.array((0, *np.cumsum(field_dims)[:-1]), dtype=np.int64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + x.new_tensor(self.offsets).unsqueeze(0)
        return torch.sum(self.fc(x), dim=1) + self.bias


class TorchFMModel(nn.Module):
    """torchfm's FactorizationMachineModel: no dense input, LongTensor [B, F]."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embedding = FeaturesEmbedding(FIELD_ROWS, DIM)
        self.linear = FeaturesLinear(FIELD_ROWS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.embedding(x)
        pairs = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1, keepdim=True)
        return torch.sigmoid((self.linear(x) + pairs).squeeze(1))


class JointEmbedding(nn.Module):
    """NVIDIA DLRM's: the offsets a buffer of cumulative sizes, read as offsets[:-1]."""

    def __init__(self, sizes: tuple[int, ...], dim: int) -> None:
        super().__init__()
        self.register_buffer("offsets", torch.tensor((0,) + sizes).cumsum(0))
        self.embedding = nn.Embedding(sum(sizes), dim)

    def forward(self, categorical_inputs: torch.Tensor) -> list[torch.Tensor]:
        return [self.embedding(categorical_inputs + self.offsets[:-1])]


class NvidiaJointDLRM(nn.Module):
    """Dense bottom MLP, a joint embedding, concatenation; the number of fields from a shape."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.bottom = nn.Sequential(nn.Linear(DENSE, DIM), nn.ReLU())
        self.embeddings = JointEmbedding(FIELD_ROWS, DIM)
        self.top = nn.Linear(DIM * (len(FIELD_ROWS) + 1), 1)

    def forward(self, numerical: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        fields = int(categorical.shape[1])  # an int from a shape: torch.export captures it
        embedded = self.embeddings(categorical)[0].reshape(-1, fields * DIM)
        return self.top(torch.cat([self.bottom(numerical), embedded], dim=1))


class SymbolicJointDLRM(NvidiaJointDLRM):
    """The same model written for torch.fx (flatten instead of an int from a shape)."""

    def forward(self, numerical: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        embedded = self.embeddings(categorical)[0].flatten(1)
        return self.top(torch.cat([self.bottom(numerical), embedded], dim=1))


class LearnedOffsetsModel(nn.Module):
    """Offsets held as a parameter (a learned value, even if frozen): the table stays whole."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.offsets = nn.Parameter(torch.tensor(_offsets(FIELD_ROWS)), requires_grad=False)
        self.embedding = nn.Embedding(sum(FIELD_ROWS), DIM)
        self.top = nn.Linear(DIM * len(FIELD_ROWS) + DENSE, 1)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.top(torch.cat([dense, self.embedding(ids + self.offsets).flatten(1)], dim=1))


class DataOffsetsModel(nn.Module):
    """Offsets computed from the batch (the field sizes come with it): the table stays whole."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embedding = nn.Embedding(sum(FIELD_ROWS), DIM)
        self.top = nn.Linear(DIM * len(FIELD_ROWS) + DENSE, 1)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        offsets = torch.cumsum(sizes, 0) - sizes
        return self.top(torch.cat([dense, self.embedding(ids + offsets).flatten(1)], dim=1))


def _dense(seed: int, batch: int = BATCH) -> torch.Tensor:
    return torch.rand(batch, DENSE, generator=torch.Generator().manual_seed(seed + 6))


def make_inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense [B, DENSE], ids [B, F]) for the joint DLRMs: the distributed tests' batches."""
    return _dense(seed, batch), field_ids(seed, batch)


def torchfm_model(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    return TorchFMModel(seed), (field_ids(seed),)


def nvidia_joint_dlrm(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    return NvidiaJointDLRM(seed), (_dense(seed), field_ids(seed))


def symbolic_joint_dlrm(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    return SymbolicJointDLRM(seed), (_dense(seed), field_ids(seed))


def learned_offsets_model(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    return LearnedOffsetsModel(seed), (_dense(seed), field_ids(seed))


def data_offsets_model(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
    return DataOffsetsModel(seed), (_dense(seed), field_ids(seed), torch.tensor(FIELD_ROWS))


JOINT_ENTRIES: tuple[Entry, ...] = (
    Entry("torchfm FM", "joint tables, numpy offsets (torchfm FeaturesEmbedding)", torchfm_model),
    Entry("NVIDIA joint DLRM", "joint table, offsets buffer (NVIDIA JointEmbedding; export)", nvidia_joint_dlrm),
    Entry("NVIDIA joint DLRM (fx)", "joint table, offsets buffer, torch.fx-traceable", symbolic_joint_dlrm),
    Entry("joint, learned offsets", "joint table, offsets a parameter: stays whole", learned_offsets_model,
          warns="is a parameter"),
    Entry("joint, data offsets", "joint table, offsets from the batch: stays whole", data_offsets_model,
          warns="computed from the input"),
)
