"""Random DLRM-style models for property tests of dmt_fx.

Two families, both described by a frozen, printable spec (Hypothesis shows the spec of a
failing example, and `build_*`/`make_*_inputs` rebuild it exactly):

* TorchRec (`TorchRecSpec`): one or two EmbeddingBagCollections, each fed by its own
  KeyedJaggedTensor. Tables of mixed dims ({2, 4, 8, 16}) serving 1-3 features (shared
  tables), SUM/MEAN pooling, weighted collections (SUM only, weights from the KJT), KJT
  keys in an arbitrary order, optionally the same keys and table names in both
  collections, and the pooled output read either as `KeyedTensor.values()` or key by key
  (`to_dict()[key]` in a random order). Captured by torch.fx symbolic tracing.
* Plain PyTorch (`PlainSpec`): an `nn.ModuleList` of `nn.EmbeddingBag` called in a
  Python loop over lists of per-feature offsets/ids (and per-sample weights), like the
  reference DLRM; a table may serve several features (the module is called several
  times). Not fx-traceable, so it exercises the torch.export route.

Every model: dense MLP on the dense features, concatenation of the dense output with all
pooled embeddings, linear over-arch. Inputs include empty bags (lengths 0), whole
features without ids, and batch size 1.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn as nn
from hypothesis import strategies as st
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

DIMS = (2, 4, 8, 16)
DENSE_IN = 5
DENSE_OUT = 4
MAX_FEATURES = 64


# ---------------------------------------------------------------- parameters


def set_seed_params(module: nn.Module, seed: int) -> None:
    """Give every parameter deterministic values from `seed` (independent of init order)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=g) - 0.5)


# ---------------------------------------------------------------- TorchRec family


@dataclasses.dataclass(frozen=True)
class TableSpec:
    name: str
    num_embeddings: int
    dim: int
    pooling: str  # "sum" | "mean"
    features: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class CollectionSpec:
    attr: str  # attribute name of the collection in the model
    weighted: bool
    tables: tuple[TableSpec, ...]
    kjt_keys: tuple[str, ...]  # key order of the KJT fed to this collection
    read_order: tuple[str, ...] | None  # None: KeyedTensor.values(); else to_dict()[k] in this order

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(f for t in self.tables for f in t.features)

    def rows_of(self, key: str) -> int:
        return next(t.num_embeddings for t in self.tables if key in t.features)

    @property
    def width(self) -> int:
        return sum(t.dim * len(t.features) for t in self.tables)


@dataclasses.dataclass(frozen=True)
class TorchRecSpec:
    collections: tuple[CollectionSpec, ...]
    max_lengths: tuple[tuple[int, ...], ...]  # per collection, per KJT key: lengths drawn in 0..max
    num_hosts: int
    local_world_size: int
    batch_size: int
    example_batch_size: int
    seed: int

    @property
    def num_features(self) -> int:
        return sum(len(c.features) for c in self.collections)

    @property
    def num_tables(self) -> int:
        return sum(len(c.tables) for c in self.collections)

    @property
    def topology(self) -> str:
        return f"{self.num_hosts}x{self.local_world_size}"

    def feature_names(self) -> list[tuple[str, str, str]]:
        """(plan feature name, collection attr, table path) for every feature.

        Plan names are KJT keys; a key already used by an earlier collection is qualified
        as "<collection path>:<key>" (dmt_fx.compiler.analysis naming)."""
        out, taken = [], set()
        for c in self.collections:
            for t in c.tables:
                for key in t.features:
                    name = key if key not in taken else f"{c.attr}:{key}"
                    taken.add(name)
                    out.append((name, c.attr, f"{c.attr}.embedding_bags.{t.name}"))
        return out


def _split(draw, total: int, low: int, high: int) -> list[int]:
    """Split `total` into parts in [low, high] (the last may be smaller)."""
    parts = []
    while total > 0:
        k = draw(st.integers(low, min(high, total)))
        parts.append(k)
        total -= k
    return parts


@st.composite
def torchrec_specs(draw, max_features: int = MAX_FEATURES) -> TorchRecSpec:
    num_features = draw(st.integers(1, max_features))
    num_collections = 1 if num_features == 1 else draw(st.integers(1, 2))
    if num_collections == 2:
        first = draw(st.integers(1, num_features - 1))
        sizes = [first, num_features - first]
    else:
        sizes = [num_features]
    same_names = num_collections == 2 and draw(st.booleans())  # both: keys f0.., tables t0..
    collections, max_lengths, next_feature = [], [], 0
    for c, size in enumerate(sizes):
        weighted = draw(st.booleans())
        start = 0 if same_names else next_feature
        next_feature = start + size
        keys = [f"f{start + i}" for i in range(size)]
        tables, cursor = [], 0
        for i, n in enumerate(_split(draw, size, 1, 3)):
            pooling = "sum" if weighted else draw(st.sampled_from(["sum", "mean"]))
            tables.append(TableSpec(
                name=f"t{i}" if same_names or c == 0 else f"t{i}_{c}",
                num_embeddings=draw(st.integers(1, 40)),
                dim=draw(st.sampled_from(DIMS)),
                pooling=pooling,
                features=tuple(keys[cursor:cursor + n]),
            ))
            cursor += n
        kjt_keys = tuple(draw(st.permutations(keys)))
        read_order = tuple(draw(st.permutations(keys))) if draw(st.booleans()) else None
        collections.append(CollectionSpec(f"ebc{c}", weighted, tuple(tables), kjt_keys, read_order))
        # Mostly short bags with empty ones; sometimes a feature without any id at all.
        max_lengths.append(tuple(draw(st.sampled_from([0, 1, 2, 3])) for _ in kjt_keys))
    return TorchRecSpec(
        collections=tuple(collections),
        max_lengths=tuple(max_lengths),
        num_hosts=draw(st.integers(1, 4)),
        local_world_size=draw(st.integers(1, 2)),
        batch_size=draw(st.integers(1, 6)),
        example_batch_size=draw(st.integers(1, 6)),
        seed=draw(st.integers(0, 2**16)),
    )


class _TorchRecBase(nn.Module):
    def __init__(self, spec: TorchRecSpec) -> None:
        super().__init__()
        self.spec = spec
        for c in spec.collections:
            configs = [
                EmbeddingBagConfig(
                    name=t.name, embedding_dim=t.dim, num_embeddings=t.num_embeddings,
                    feature_names=list(t.features),
                    pooling=PoolingType.SUM if t.pooling == "sum" else PoolingType.MEAN,
                )
                for t in c.tables
            ]
            setattr(self, c.attr, EmbeddingBagCollection(tables=configs, is_weighted=c.weighted))
        self.read_orders = [c.read_order for c in spec.collections]
        self.dense_arch = nn.Sequential(nn.Linear(DENSE_IN, 8), nn.ReLU(), nn.Linear(8, DENSE_OUT), nn.ReLU())
        width = DENSE_OUT + sum(c.width for c in spec.collections)
        self.over_arch = nn.Linear(width, 1)

    def _pooled(self, kt, order) -> list:
        if order is None:
            return [kt.values()]
        by_key = kt.to_dict()
        return [by_key[k] for k in order]


class OneCollectionModel(_TorchRecBase):
    def forward(self, dense: torch.Tensor, kjt0: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self._pooled(self.ebc0(kjt0), self.read_orders[0])
        return self.over_arch(torch.cat([self.dense_arch(dense)] + pooled, dim=1))


class TwoCollectionsModel(_TorchRecBase):
    def forward(self, dense: torch.Tensor, kjt0: KeyedJaggedTensor, kjt1: KeyedJaggedTensor) -> torch.Tensor:
        dense_out = self.dense_arch(dense)
        pooled = self._pooled(self.ebc0(kjt0), self.read_orders[0])
        pooled += self._pooled(self.ebc1(kjt1), self.read_orders[1])
        return self.over_arch(torch.cat([dense_out] + pooled, dim=1))


def build_torchrec_model(spec: TorchRecSpec) -> nn.Module:
    torch.manual_seed(spec.seed)
    cls = OneCollectionModel if len(spec.collections) == 1 else TwoCollectionsModel
    model = cls(spec)
    set_seed_params(model, spec.seed)
    return model


def make_torchrec_inputs(spec: TorchRecSpec, batch_size: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(batch_size, DENSE_IN, generator=g)
    kjts = []
    for c, max_lengths in zip(spec.collections, spec.max_lengths):
        lengths = torch.stack([torch.randint(0, m + 1, (batch_size,), generator=g) for m in max_lengths])
        values = torch.cat([
            torch.randint(0, c.rows_of(key), (int(lengths[i].sum()),), generator=g)
            for i, key in enumerate(c.kjt_keys)
        ])
        weights = torch.rand(values.numel(), generator=g) if c.weighted else None
        kjts.append(KeyedJaggedTensor.from_lengths_sync(
            keys=list(c.kjt_keys), values=values, lengths=lengths.reshape(-1), weights=weights))
    return (dense, *kjts)


# ---------------------------------------------------------------- plain PyTorch family


@dataclasses.dataclass(frozen=True)
class PlainTable:
    num_embeddings: int
    dim: int
    mode: str  # "sum" | "mean"


@dataclasses.dataclass(frozen=True)
class PlainSpec:
    tables: tuple[PlainTable, ...]
    feature_table: tuple[int, ...]  # feature k (call order) -> table index
    feature_weighted: tuple[bool, ...]  # feature k passes per_sample_weights (sum tables only)
    max_lengths: tuple[int, ...]  # per feature
    num_hosts: int
    local_world_size: int
    batch_size: int
    seed: int

    @property
    def num_tables(self) -> int:
        return len(self.tables)

    @property
    def topology(self) -> str:
        return f"{self.num_hosts}x{self.local_world_size}"

    def feature_names(self) -> list[tuple[str, str]]:
        """(plan feature name, table path): the module path, "@k" for its k-th extra call."""
        calls: dict[int, int] = {}
        out = []
        for t in self.feature_table:
            k = calls[t] = calls.get(t, -1) + 1
            out.append((f"emb_l.{t}" + (f"@{k}" if k else ""), f"emb_l.{t}"))
        return out


@st.composite
def plain_specs(draw, max_features: int = 12) -> PlainSpec:
    num_features = draw(st.integers(1, max_features))
    sizes = _split(draw, num_features, 1, 3)
    tables = []
    for _ in sizes:
        tables.append(PlainTable(draw(st.integers(1, 40)), draw(st.sampled_from(DIMS)),
                                 draw(st.sampled_from(["sum", "mean"]))))
    feature_table = tuple(draw(st.permutations([t for t, n in enumerate(sizes) for _ in range(n)])))
    weighted = tuple(tables[t].mode == "sum" and draw(st.booleans()) for t in feature_table)
    return PlainSpec(
        tables=tuple(tables),
        feature_table=feature_table,
        feature_weighted=weighted,
        max_lengths=tuple(draw(st.sampled_from([0, 1, 2, 3])) for _ in feature_table),
        num_hosts=draw(st.integers(1, 4)),
        local_world_size=draw(st.integers(1, 2)),
        batch_size=draw(st.integers(1, 6)),
        seed=draw(st.integers(0, 2**16)),
    )


class PlainModel(nn.Module):
    """Reference-DLRM style: Python loop over per-feature lists of offsets/ids/weights."""

    def __init__(self, spec: PlainSpec) -> None:
        super().__init__()
        self.feature_table = list(spec.feature_table)
        self.feature_weighted = list(spec.feature_weighted)
        self.emb_l = nn.ModuleList(nn.EmbeddingBag(t.num_embeddings, t.dim, mode=t.mode) for t in spec.tables)
        self.dense_arch = nn.Sequential(nn.Linear(DENSE_IN, 8), nn.ReLU(), nn.Linear(8, DENSE_OUT), nn.ReLU())
        width = DENSE_OUT + sum(spec.tables[t].dim for t in spec.feature_table)
        self.over_arch = nn.Linear(width, 1)

    def forward(self, dense: torch.Tensor, offsets: list[torch.Tensor], ids: list[torch.Tensor],
                weights: list[torch.Tensor]) -> torch.Tensor:
        ly = []
        w = 0
        # Iterating the input list (not indexing it) is what defeats torch.fx tracing.
        for k, ids_k in enumerate(ids):
            psw = None
            if self.feature_weighted[k]:
                psw = weights[w]
                w += 1
            ly.append(self.emb_l[self.feature_table[k]](ids_k, offsets[k], per_sample_weights=psw))
        return self.over_arch(torch.cat([self.dense_arch(dense)] + ly, dim=1))


def build_plain_model(spec: PlainSpec) -> nn.Module:
    torch.manual_seed(spec.seed)
    model = PlainModel(spec)
    set_seed_params(model, spec.seed)
    return model


def make_plain_inputs(spec: PlainSpec, batch_size: int, seed: int, *, min_length: int = 0) -> tuple[Any, ...]:
    """(dense, offsets, ids, weights). `min_length` > 0 gives every bag an id (export needs
    example inputs whose dimensions are >= 2, or it specialises them)."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(batch_size, DENSE_IN, generator=g)
    offsets, ids, weights = [], [], []
    for k, table in enumerate(spec.feature_table):
        high = max(spec.max_lengths[k], min_length)
        lengths = torch.randint(min_length, high + 1, (batch_size,), generator=g)
        offsets.append(torch.cumsum(lengths, 0) - lengths)  # bag starts, length B
        ids.append(torch.randint(0, spec.tables[table].num_embeddings, (int(lengths.sum()),), generator=g))
        if spec.feature_weighted[k]:
            weights.append(torch.rand(int(lengths.sum()), generator=g))
    return dense, offsets, ids, weights
