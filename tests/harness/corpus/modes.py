"""Mode-dependent models: BatchNorm and Dropout after the embeddings, the way CTR
libraries write their MLPs, captured by each route and in each mode.

- `BNDropoutMLP`: per-field nn.Embedding, an nn.Sequential of Linear / BatchNorm1d / ReLU /
  Dropout (torch.fx traces it); `ExportBNDropoutMLP` the same with an int taken from the ids'
  shape, which only torch.export captures.
- `CTRBlockModel`: a library's MLP block whose forward calls `F.dropout(x, self.p,
  self.training)` next to a BatchNorm1d module (export route).
- `RootDropoutModel`: `F.dropout(..., training=self.training)` in the model's own forward.
- `TorchFMDeepFM`: torchfm's DeepFM as torchfm writes it: joint tables whose offsets are a
  numpy array read through `x.new_tensor(self.offsets)`, a linear part, an FM part and an
  MLP with BatchNorm1d and Dropout, summed into the logit.

Every model is built in train mode; the "(eval)" rows are captured in eval mode. The corpus
check runs each in both modes whatever the capture mode.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.harness.corpus.entry import Entry
from tests.harness.corpus.joint import FIELD_ROWS, FeaturesEmbedding, FeaturesLinear, field_ids

BATCH, DENSE, DIM, FIELDS, ROWS = 8, 5, 4, 3, 10
HIDDEN = 6


def mlp(width: int, dropout: float = 0.3) -> nn.Sequential:
    """torchfm's MultiLayerPerceptron layers: Linear, BatchNorm1d, ReLU, Dropout, then a logit."""
    return nn.Sequential(nn.Linear(width, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(HIDDEN, 1))


class BNDropoutMLP(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fields = nn.ModuleList(nn.Embedding(ROWS, DIM) for _ in range(FIELDS))
        self.top = mlp(DENSE + FIELDS * DIM)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        embedded = [table(ids[:, i]) for i, table in enumerate(self.fields)]
        return self.top(torch.cat([dense] + embedded, dim=1))


class ExportBNDropoutMLP(BNDropoutMLP):
    """The same; the fields' count read from a shape (torch.fx cannot, torch.export can)."""

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        fields = int(ids.shape[1])  # an int from a shape: torch.export captures it
        embedded = torch.stack([table(ids[:, i]) for i, table in enumerate(self.fields)], dim=1)
        return self.top(torch.cat([dense, embedded.reshape(-1, fields * DIM)], dim=1))


class MLPBlock(nn.Module):
    """A CTR library's block: dropout as a function of the module's own training flag."""

    def __init__(self, width: int, p: float = 0.25) -> None:
        super().__init__()
        self.linear, self.norm, self.p = nn.Linear(width, HIDDEN), nn.BatchNorm1d(HIDDEN), p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(torch.relu(self.norm(self.linear(x))), self.p, self.training)


class CTRBlockModel(ExportBNDropoutMLP):
    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.top = nn.Sequential(MLPBlock(DENSE + FIELDS * DIM), nn.Linear(HIDDEN, 1))


class RootDropoutModel(BNDropoutMLP):
    """Dropout on the embeddings, called in the model's own forward."""

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        embedded = torch.cat([table(ids[:, i]) for i, table in enumerate(self.fields)], dim=1)
        embedded = F.dropout(embedded, p=0.2, training=self.training)
        return self.top(torch.cat([dense, embedded], dim=1))


class TorchFMDeepFM(nn.Module):
    """torchfm's DeepFactorizationMachineModel (its FeaturesLinear / FeaturesEmbedding)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = FeaturesLinear(FIELD_ROWS)
        self.embedding = FeaturesEmbedding(FIELD_ROWS, DIM)
        self.embed_output_dim = len(FIELD_ROWS) * DIM
        self.mlp = mlp(self.embed_output_dim, dropout=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embed_x = self.embedding(x)
        fm = 0.5 * (embed_x.sum(1) ** 2 - (embed_x ** 2).sum(1)).sum(1, keepdim=True)
        x = self.linear(x) + fm + self.mlp(embed_x.view(-1, self.embed_output_dim))
        return torch.sigmoid(x.squeeze(1))


def make_inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense [B, DENSE], ids [B, FIELDS]): the batches of the mode models."""
    g = torch.Generator().manual_seed(seed + 11)
    return torch.rand(batch, DENSE, generator=g), torch.randint(0, ROWS, (batch, FIELDS), generator=g)


def _builder(cls: type[nn.Module], training: bool) -> Callable[[int], tuple[nn.Module, tuple[Any, ...]]]:
    def build(seed: int) -> tuple[nn.Module, tuple[Any, ...]]:
        model = cls(seed).train(training)
        if cls is TorchFMDeepFM:
            return model, (field_ids(seed, BATCH),)
        return model, make_inputs(BATCH, seed)
    return build


def _rows(name: str, cls: type[nn.Module], style: str) -> tuple[Entry, ...]:
    return (Entry(name, f"{style}; captured in train mode", _builder(cls, True)),
            Entry(f"{name} (eval)", f"{style}; captured in eval mode", _builder(cls, False)))


MODE_ENTRIES: tuple[Entry, ...] = (
    _rows("BatchNorm+Dropout MLP (fx)", BNDropoutMLP, "BatchNorm1d and Dropout after the embeddings")
    + _rows("BatchNorm+Dropout MLP (export)", ExportBNDropoutMLP, "the same, an int from a shape (export)")
    + _rows("CTR MLP block", CTRBlockModel, "F.dropout(x, p, self.training) in a block (export)")
    + _rows("root-level dropout", RootDropoutModel, "F.dropout(training=self.training) in the model's forward")
    + _rows("torchfm DeepFM", TorchFMDeepFM, "numpy offsets via new_tensor; linear + FM + BN/Dropout MLP")
)
