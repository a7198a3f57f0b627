"""Random torchrec.models.dlrm models, reference-DLRM-style plain models and the fuzz cases
over them (odd inputs included), for tests/test_fuzz.py.

Each case is a frozen, printable `Case` (Hypothesis shows it on failure):

* "concat": the random TorchRec concat models of tests/harness/random_models.py (one or two
  EBCs, mixed dims, shared tables, weighted collections, SUM/MEAN, read by key).
* "dlrm" / "dlrm_dcn" / "dlrm_projection": torchrec.models.dlrm over a random EBC
  (1-12 features, equal dim 4 or 8, shared tables, SUM/MEAN, KJT keys in random order).
* "ref_dot": a plain-PyTorch reference-DLRM-style model (Python loops over lists of
  offsets/ids, ints from shapes, pairwise-dot interaction with or without self terms),
  captured through torch.export (~0.4 s each, so ~9% of the examples).
* Odd inputs: a user plan naming an unknown feature, a topology string that is not
  valid ("0x2", "2y4", "1x0", "x"), a model whose embeddings never meet a dense input
  (these three must raise a DMTError), and a random user plan over the model's
  features (shared tables possibly split, hosts possibly repeated): either way allowed.

Topology: 1..4 hosts x 1..2.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn as nn
from hypothesis import strategies as st
from torchrec.models.dlrm import DLRM, DLRM_DCN, DLRM_Projection
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from tests.harness.random_models import (
    _split,
    build_torchrec_model,
    make_torchrec_inputs,
    set_seed_params,
    torchrec_specs,
)

# ---------------------------------------------------------------- torchrec.models.dlrm family


@dataclasses.dataclass(frozen=True)
class EBCSpec:
    dim: int
    tables: tuple[tuple[int, str, tuple[str, ...]], ...]  # (rows, "sum"|"mean", features)
    kjt_keys: tuple[str, ...]
    max_length: int

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(f for _, _, fs in self.tables for f in fs)

    def rows_of(self, key: str) -> int:
        return next(n for n, _, fs in self.tables if key in fs)


@st.composite
def ebc_specs(draw, max_features: int = 12) -> EBCSpec:
    n = draw(st.integers(1, max_features))
    dim = draw(st.sampled_from([4, 8]))
    keys = [f"f{i}" for i in range(n)]
    tables, cursor = [], 0
    for size in _split(draw, n, 1, 3):
        tables.append((draw(st.integers(1, 40)), draw(st.sampled_from(["sum", "mean"])),
                       tuple(keys[cursor:cursor + size])))
        cursor += size
    return EBCSpec(dim, tuple(tables), tuple(draw(st.permutations(keys))), draw(st.integers(0, 3)))


def make_ebc(spec: EBCSpec) -> EmbeddingBagCollection:
    return EmbeddingBagCollection(tables=[
        EmbeddingBagConfig(name=f"t{i}", embedding_dim=spec.dim, num_embeddings=rows, feature_names=list(fs),
                           pooling=PoolingType.SUM if pooling == "sum" else PoolingType.MEAN)
        for i, (rows, pooling, fs) in enumerate(spec.tables)
    ])


def make_kjt(spec: EBCSpec, batch_size: int, g: torch.Generator) -> KeyedJaggedTensor:
    lengths = torch.randint(0, spec.max_length + 1, (len(spec.kjt_keys), batch_size), generator=g)
    values = torch.cat([torch.randint(0, spec.rows_of(k), (int(lengths[i].sum()),), generator=g)
                        for i, k in enumerate(spec.kjt_keys)])
    return KeyedJaggedTensor.from_lengths_sync(keys=list(spec.kjt_keys), values=values, lengths=lengths.reshape(-1))


@dataclasses.dataclass(frozen=True)
class DLRMSpec:
    kind: str  # "dlrm" | "dlrm_dcn" | "dlrm_projection" | "embeddings_only"
    ebc: EBCSpec
    dense_in: int
    hidden: int
    dcn_layers: int
    dcn_rank: int
    branch: tuple[int, int]  # projection branch sizes in multiples of dim


@st.composite
def dlrm_specs(draw, kind: str) -> DLRMSpec:
    return DLRMSpec(kind, draw(ebc_specs()), draw(st.integers(1, 6)), draw(st.integers(1, 8)),
                    draw(st.integers(1, 3)), draw(st.integers(1, 4)),
                    (draw(st.integers(1, 3)), draw(st.integers(1, 3))))


class EmbeddingsOnly(nn.Module):
    """Pooled embeddings straight into a linear: they never meet the dense input."""

    def __init__(self, spec: DLRMSpec) -> None:
        super().__init__()
        self.ebc = make_ebc(spec.ebc)
        self.dense_arch = nn.Linear(spec.dense_in, 2)
        self.over_arch = nn.Linear(spec.ebc.dim * len(spec.ebc.features), 1)

    def forward(self, dense: torch.Tensor, kjt: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.over_arch(self.ebc(kjt).values()), self.dense_arch(dense)


def build_dlrm(spec: DLRMSpec, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    d, h = spec.ebc.dim, spec.hidden
    common = dict(embedding_bag_collection=make_ebc(spec.ebc), dense_in_features=spec.dense_in,
                  dense_arch_layer_sizes=[h, d], over_arch_layer_sizes=[h, 1])
    if spec.kind == "dlrm":
        model = DLRM(**common)
    elif spec.kind == "dlrm_dcn":
        model = DLRM_DCN(**common, dcn_num_layers=spec.dcn_layers, dcn_low_rank_dim=spec.dcn_rank)
    elif spec.kind == "dlrm_projection":
        model = DLRM_Projection(**common, interaction_branch1_layer_sizes=[h, spec.branch[0] * d],
                                interaction_branch2_layer_sizes=[h, spec.branch[1] * d])
    else:
        model = EmbeddingsOnly(spec)
    set_seed_params(model, seed)
    return model


def dlrm_inputs(spec: DLRMSpec, batch_size: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(batch_size, spec.dense_in, generator=g)
    return dense, make_kjt(spec.ebc, batch_size, g)


# ---------------------------------------------------------------- plain PyTorch pairwise-dot family


@dataclasses.dataclass(frozen=True)
class RefDotSpec:
    dim: int
    tables: tuple[int, ...]  # rows per table (all sum pooling, like the reference)
    feature_table: tuple[int, ...]  # feature k (list position) -> table index
    itself: bool  # arch_interaction_itself
    max_length: int


@st.composite
def ref_dot_specs(draw) -> RefDotSpec:
    n = draw(st.integers(1, 8))
    sizes = _split(draw, n, 1, 2)
    return RefDotSpec(
        dim=draw(st.sampled_from([4, 8])),
        tables=tuple(draw(st.integers(1, 40)) for _ in sizes),
        feature_table=tuple(draw(st.permutations([t for t, k in enumerate(sizes) for _ in range(k)]))),
        itself=draw(st.booleans()),
        max_length=draw(st.integers(0, 3)),
    )


class RefDotModel(nn.Module):
    """Reference DLRM style: lists of offsets/ids iterated in Python, shapes unpacked,
    index tensors rebuilt from Python loops over Z.shape on every call."""

    def __init__(self, spec: RefDotSpec) -> None:
        super().__init__()
        self.feature_table = list(spec.feature_table)
        self.itself = spec.itself
        self.emb_l = nn.ModuleList(nn.EmbeddingBag(n, spec.dim, mode="sum") for n in spec.tables)
        self.bot_l = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, spec.dim), nn.ReLU())
        f = len(spec.feature_table) + 1
        pairs = f * (f + 1) // 2 if spec.itself else f * (f - 1) // 2
        self.top_l = nn.Sequential(nn.Linear(spec.dim + pairs, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid())

    def forward(self, dense_x: torch.Tensor, lS_o: list[torch.Tensor], lS_i: list[torch.Tensor]) -> torch.Tensor:
        x = self.bot_l(dense_x)
        ly = []
        for k, ids in enumerate(lS_i):
            ly.append(self.emb_l[self.feature_table[k]](ids, lS_o[k], per_sample_weights=None))
        (batch_size, d) = x.shape
        T = torch.cat([x] + ly, dim=1).view((batch_size, -1, d))
        Z = torch.bmm(T, torch.transpose(T, 1, 2))
        _, ni, nj = Z.shape
        offset = 1 if self.itself else 0
        li = torch.tensor([i for i in range(ni) for j in range(i + offset)])
        lj = torch.tensor([j for i in range(nj) for j in range(i + offset)])
        return self.top_l(torch.cat([x, Z[:, li, lj]], dim=1))


def ref_dot_inputs(spec: RefDotSpec, batch_size: int, seed: int, min_length: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(batch_size, 5, generator=g)
    offsets, ids = [], []
    for t in spec.feature_table:
        lengths = torch.randint(min_length, max(spec.max_length, min_length) + 1, (batch_size,), generator=g)
        offsets.append(torch.cumsum(lengths, 0) - lengths)
        ids.append(torch.randint(0, spec.tables[t], (int(lengths.sum()),), generator=g))
    return dense, offsets, ids


def ref_dot_feature_names(spec: RefDotSpec) -> list[str]:
    calls: dict[int, int] = {}
    out = []
    for t in spec.feature_table:
        k = calls[t] = calls.get(t, -1) + 1
        out.append(f"emb_l.{t}" + (f"@{k}" if k else ""))
    return out


# ---------------------------------------------------------------- cases


@dataclasses.dataclass(frozen=True)
class Case:
    family: str  # "concat" | "dlrm" | "dlrm_dcn" | "dlrm_projection" | "ref_dot" | "embeddings_only"
    spec: Any
    topology: str
    plan: str  # "auto" | "random_plan" | "unknown_feature"
    plan_towers: tuple[tuple[int, tuple[int, ...]], ...]  # random plan: (host, feature indices)
    batch_size: int
    example_batch_size: int
    seed: int
    must_fail: bool  # a deliberately odd input: transform must raise a DMTError


@st.composite
def cases(draw) -> Case:
    # Weighted by repetition (st.integers(0, 99) would cluster near its shrink target).
    kind = draw(st.sampled_from(["concat"] * 7 + ["dlrm", "dlrm_dcn", "dlrm_projection"] * 3 + ["ref_dot"] * 2
                                + ["unknown_feature", "bad_topology", "embeddings_only"] + ["random_plan"] * 2))
    hosts, local = draw(st.integers(1, 4)), draw(st.integers(1, 2))
    topology = f"{hosts}x{local}"
    plan, must_fail = "auto", False
    if kind == "concat":
        family, spec = "concat", draw(torchrec_specs(max_features=32))
        topology = spec.topology
    elif kind.startswith("dlrm"):
        family, spec = kind, draw(dlrm_specs(kind))
    elif kind == "ref_dot":  # torch.export route, ~0.4 s: 2 in 23 (~9%) of the examples
        family, spec = "ref_dot", draw(ref_dot_specs())
    else:  # odd inputs on a torchrec DLRM
        family = draw(st.sampled_from(["dlrm", "dlrm_dcn", "dlrm_projection"]))
        spec = draw(dlrm_specs(family))
        # A model of embeddings only has no interaction site; the identity rewrite needs
        # none, so it must transform and stay equivalent.
        must_fail = kind not in ("random_plan", "embeddings_only")
        if kind == "bad_topology":
            topology = draw(st.sampled_from(["0x2", "2y4", "1x0", "x", "-1x2", "2x", ""]))
        elif kind == "embeddings_only":
            family = "embeddings_only"
            spec = dataclasses.replace(spec, kind="embeddings_only")
        else:
            plan = kind
    plan_towers: tuple = ()
    if plan in ("random_plan", "unknown_feature"):
        n = len(spec.ebc.features)
        num_towers = draw(st.integers(1, hosts))
        assign = [draw(st.integers(0, num_towers - 1)) for _ in range(n)]
        tower_hosts = [draw(st.integers(0, hosts - 1)) for _ in range(num_towers)]
        plan_towers = tuple((tower_hosts[t], tuple(i for i in range(n) if assign[i] == t)) for t in range(num_towers))
    return Case(family, spec, topology, plan, plan_towers, draw(st.integers(1, 6)), draw(st.integers(1, 6)),
                draw(st.integers(0, 2**16)), must_fail)


def plan_dict(case: Case) -> dict | None:
    if case.plan == "auto":
        return None
    features = case.spec.ebc.features
    towers = [{"host": h, "features": [features[i] for i in ix]} for h, ix in case.plan_towers]
    if case.plan == "unknown_feature":
        towers[0]["features"].append("no_such_feature")
    return {"topology": case.topology, "towers": towers}


def build_case(case: Case) -> tuple[nn.Module, tuple, tuple]:
    """(model, example inputs, fresh batch)."""
    spec = case.spec
    if case.family == "concat":
        return (build_torchrec_model(spec), make_torchrec_inputs(spec, spec.example_batch_size, spec.seed),
                make_torchrec_inputs(spec, spec.batch_size, spec.seed + 1))
    if case.family == "ref_dot":
        torch.manual_seed(case.seed)
        model = RefDotModel(spec)
        set_seed_params(model, case.seed)
        # >= 2 samples and >= 1 id per bag: torch.export specialises dimensions of size 0 or 1.
        return (model, ref_dot_inputs(spec, 4, case.seed, min_length=1),
                ref_dot_inputs(spec, case.batch_size, case.seed + 1))
    return (build_dlrm(spec, case.seed), dlrm_inputs(spec, case.example_batch_size, case.seed),
            dlrm_inputs(spec, case.batch_size, case.seed + 1))
