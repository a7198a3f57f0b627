"""Random models in the input styles real code uses, for property tests.

`StyleSpec` draws one of: a batch dataclass, a dict, one float tensor holding dense values
and id columns, id-only fields (a LongTensor [B, F], no dense input), quotient-remainder
bags combined by multiply or concatenation (functional lookups: the export route), and
multi-head attention over the embeddings; the dataclass, dict and attention styles with or
without a dense input; joint tables (one nn.Embedding for all fields, indexed with per-field
offsets: constant ones, split by field, or ones computed from the batch, kept whole with a
warning). Otherwise each field has its own table (nn.Embedding on one id column, or a QR
pair); fields share one dim so attention can stack them.

Orthogonal to the style: the head before the top layer (none, BatchNorm1d, Dropout
or both, as CTR libraries' MLPs), the mode the model is in at capture (train or eval), and for
the tensor-input styles whether forward reads an int from a shape, which symbolic tracing
cannot follow, so the model is captured by torch.export.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn as nn
from hypothesis import strategies as st

from tests.harness.corpus.composite import QREmbeddingBag
from tests.harness.random_models import set_seed_params

STYLES = ("dataclass", "dict", "float_columns", "ids_only", "qr_mult", "qr_concat", "attention", "joint",
          "joint_data")
DENSE_IN = 3
HEADS = ("none", "batchnorm", "dropout", "batchnorm_dropout")
EXPORTABLE = ("float_columns", "ids_only", "attention", "joint", "joint_data")


@dataclasses.dataclass(frozen=True)
class StyleSpec:
    style: str
    rows: tuple[int, ...]  # per field
    dim: int
    has_dense: bool
    num_hosts: int
    local_world_size: int
    batch_size: int
    seed: int
    head: str = "none"
    training: bool = True  # the model's mode at capture
    force_export: bool = False

    @property
    def topology(self) -> str:
        return f"{self.num_hosts}x{self.local_world_size}"

    @property
    def num_tables(self) -> int:
        """Tables in the analysis: a joint table split by field counts one per field."""
        if self.style == "joint_data":
            return 1
        return len(self.rows) * (2 if self.style.startswith("qr") else 1)

    @property
    def num_units(self) -> int:
        """Partition units: one per field, except a joint table that stays whole."""
        return 1 if self.style == "joint_data" else len(self.rows)

    @property
    def warns(self) -> bool:
        """Whether the plan must warn: a joint table whose offsets depend on the batch."""
        return self.style == "joint_data"


@st.composite
def style_specs(draw: Any) -> StyleSpec:
    style = draw(st.sampled_from(STYLES))
    fields = draw(st.integers(1, 6))
    has_dense = style in ("float_columns", "qr_mult", "qr_concat") or (
        style in ("dataclass", "dict", "attention", "joint", "joint_data") and draw(st.booleans()))
    return StyleSpec(style, tuple(draw(st.integers(1, 30)) for _ in range(fields)), draw(st.sampled_from([2, 4, 8])),
                     has_dense, draw(st.integers(1, 4)), draw(st.integers(1, 2)), draw(st.integers(2, 6)),
                     draw(st.integers(0, 2**16)), draw(st.sampled_from(HEADS)), draw(st.booleans()),
                     style in EXPORTABLE and draw(st.booleans()))


@dataclasses.dataclass
class StyleBatch:
    ids: torch.Tensor
    dense: torch.Tensor | None


class StyleModel(nn.Module):
    def __init__(self, spec: StyleSpec) -> None:
        super().__init__()
        self.style, self.has_dense, self.num_fields = spec.style, spec.has_dense, len(spec.rows)
        if spec.style.startswith("qr"):
            operation = spec.style[3:]
            self.fields = nn.ModuleList(QREmbeddingBag(n, spec.dim, 3, operation=operation) for n in spec.rows)
        elif spec.style.startswith("joint"):  # NVIDIA's JointEmbedding: one table, an offsets buffer
            self.joint = nn.Embedding(sum(spec.rows), spec.dim)
            self.register_buffer("offsets", torch.tensor((0,) + spec.rows[:-1]).cumsum(0))
        else:
            self.fields = nn.ModuleList(nn.Embedding(n, spec.dim) for n in spec.rows)
        width = spec.dim * (2 if spec.style == "qr_concat" else 1)
        self.bottom = nn.Linear(DENSE_IN, width) if spec.has_dense else None
        self.attention = nn.MultiheadAttention(width, 1, batch_first=True) if spec.style == "attention" else None
        features = width * (self.num_fields + int(spec.has_dense))
        self.head = _head(spec.head, features)
        self.top = nn.Linear(features, 1)
        self.force_export = spec.force_export
        self.train(spec.training)

    def combine(self, ids: torch.Tensor, dense: torch.Tensor | None) -> torch.Tensor:
        if self.force_export:  # an int from a shape: symbolic tracing stops here, torch.export does not
            ids = ids[:, :int(ids.shape[1])]
        if self.style.startswith("qr"):
            embedded = [bag(ids[:, i:i + 1]) for i, bag in enumerate(self.fields)]
        elif self.style == "joint":
            embedded = list(self.joint(ids + self.offsets).unbind(1))
        elif self.style == "joint_data":  # offsets that depend on the batch (numerically the same)
            embedded = list(self.joint(ids + (ids[:1] * 0 + self.offsets)).unbind(1))
        else:
            embedded = [emb(ids[:, i]) for i, emb in enumerate(self.fields)]
        tokens = ([self.bottom(dense)] if self.bottom is not None else []) + embedded
        if self.attention is None:
            return self.top(self.head(torch.cat(tokens, dim=1)))
        stacked = torch.stack(tokens, dim=1)
        attended, _ = self.attention(stacked, stacked, stacked)
        return self.top(self.head((attended + stacked).flatten(1)))

    def forward(self, *args: Any) -> torch.Tensor:
        if self.style == "dataclass":
            return self.combine(args[0].ids, args[0].dense)
        if self.style == "dict":
            return self.combine(args[0]["ids"], args[0]["dense"] if self.has_dense else None)
        if self.style == "float_columns":
            return self.combine(args[0][:, DENSE_IN:].long(), args[0][:, :DENSE_IN])
        return self.combine(args[0], args[1] if self.has_dense else None)


def _head(kind: str, features: int) -> nn.Module:
    layers = ([nn.BatchNorm1d(features)] if "batchnorm" in kind else []) + (
        [nn.Dropout(0.5)] if "dropout" in kind else [])
    return nn.Sequential(*layers)


def build_style_model(spec: StyleSpec) -> nn.Module:
    torch.manual_seed(spec.seed)
    model = StyleModel(spec)
    set_seed_params(model, spec.seed)
    g = torch.Generator().manual_seed(spec.seed)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm1d)):  # eval mode must differ
        bn.running_mean.copy_(torch.rand(bn.num_features, generator=g) - 0.5)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    return model


def make_style_inputs(spec: StyleSpec, batch_size: int, seed: int) -> tuple[Any, ...]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, n, (batch_size,), generator=g) for n in spec.rows], dim=1)
    dense = torch.rand(batch_size, DENSE_IN, generator=g) if spec.has_dense else None
    if spec.style == "dataclass":
        return (StyleBatch(ids, dense),)
    if spec.style == "dict":
        return ({"ids": ids, **({"dense": dense} if dense is not None else {})},)
    if spec.style == "float_columns":
        return (torch.cat([dense, ids.float()], dim=1),)
    return (ids,) if dense is None else (ids, dense)
