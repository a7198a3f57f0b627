"""The Tower Partitioners (dmt_fx.compiler.partitioners) and embedding affinity (dmt_fx.compiler.affinity)."""

from __future__ import annotations

import functools

import pytest
import torch
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dmt_fx import DMTError, Topology, TowerPlan
from dmt_fx.compiler.affinity import feature_affinity, feature_embeddings, interaction_affinity, within_tower_affinity
from dmt_fx.compiler.analysis import analyze
from dmt_fx.compiler.capture import capture
from dmt_fx.compiler.partitioners import PARTITIONERS, make_partition
from dmt_fx.compiler.partitioners.balanced import balanced_plan
from dmt_fx.compiler.partitioners.learned import DEFAULT_BALANCE_SLACK, learned_plan
from dmt_fx.compiler.partitioners.random import random_plan
from dmt_fx.compiler.partitioners.search import Assignment
from examples import reference_dlrm, torchrec_dlrm, two_collections, weighted_shared
from tests.harness.random_models import (
    CollectionSpec,
    PlainSpec,
    PlainTable,
    TableSpec,
    TorchRecSpec,
    build_plain_model,
    build_torchrec_model,
    make_plain_inputs,
    make_torchrec_inputs,
)

ZOO = {m.__name__.rpartition(".")[2]: m for m in (torchrec_dlrm, weighted_shared, two_collections, reference_dlrm)}


def _sites(model, inputs):
    gm, route = capture(model, inputs)
    return analyze(gm, route)


@functools.lru_cache(maxsize=None)
def _zoo(name: str):
    model, inputs = ZOO[name].build()
    return model, inputs, _sites(model, inputs)


# ---------------------------------------------------------------- models with planted groups

PLANTED_ROWS, PLANTED_DIM, PLANTED_BATCH = 50, 8, 128
PLANTED_KEYS = [f"f{i}" for i in range(8)]


def _planted_inputs(groups: list[list[int]], batch: int = PLANTED_BATCH, seed: int = 0):
    """Features of one group read the same ids per sample; groups are drawn independently
    (a single-feature group is a feature drawn on its own)."""
    g = torch.Generator().manual_seed(seed)
    lengths: dict[int, torch.Tensor] = {}
    values: dict[int, torch.Tensor] = {}
    for group in groups:
        length = torch.randint(1, 4, (batch,), generator=g)
        ids = torch.randint(0, PLANTED_ROWS, (int(length.sum()),), generator=g)
        for k in group:
            lengths[k], values[k] = length, ids
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=PLANTED_KEYS, values=torch.cat([values[k] for k in range(8)]),
        lengths=torch.cat([lengths[k] for k in range(8)]))
    return torch.rand(batch, 4, generator=g), kjt


def _interacting_model(groups: list[list[int]]) -> DLRM:
    """A DLRM whose output combines features only inside `groups`: the over-arch's first layer
    reads the dot products of within-group pairs with weight 1 (and the dense part), every
    other dot product with weight 0, and a large bias keeps its ReLUs open, so f is exactly linear in the dots."""
    torch.manual_seed(0)
    tables = [EmbeddingBagConfig(name=f"t_{k}", embedding_dim=PLANTED_DIM, num_embeddings=PLANTED_ROWS,
                                 feature_names=[k]) for k in PLANTED_KEYS]
    model = DLRM(embedding_bag_collection=EmbeddingBagCollection(tables=tables), dense_in_features=4,
                 dense_arch_layer_sizes=[8, PLANTED_DIM], over_arch_layer_sizes=[8, 1])
    group_of = {k: g for g, members in enumerate(groups) for k in members}
    n = len(PLANTED_KEYS) + 1  # vector 0 is the dense arch's output
    rows, cols = torch.triu_indices(n, n, offset=1)
    keep = torch.tensor([0 < r and group_of[int(r) - 1] == group_of[int(c) - 1] for r, c in zip(rows, cols)])
    first = model.over_arch.model[0]._mlp[0]._linear
    with torch.no_grad():
        first.weight[:, PLANTED_DIM:] = keep.to(first.weight.dtype)  # weight 1 for within-group dots
        first.bias.fill_(100.0)
        model.over_arch.model[1].weight.fill_(1.0)
    return model


@functools.lru_cache(maxsize=None)
def _planted():
    """Groups {f0..f3} and {f4..f7} that interact in the output; ids drawn independently."""
    groups = [[0, 1, 2, 3], [4, 5, 6, 7]]
    model, inputs = _interacting_model(groups), _planted_inputs([[k] for k in range(8)])
    return model, inputs, _sites(model, inputs)


# ---------------------------------------------------------------- plan properties


def _check_plan(plan: TowerPlan, sites, topology: Topology, name: str) -> None:
    features = [f.name for f in sites.features]
    assert sorted(plan.features) == sorted(features)  # every feature exactly once
    assert len(plan.features) == len(features)
    tables = {f.table for f in sites.features}
    assert len(plan.towers) == min(topology.num_hosts, len(tables))
    assert all(t.features for t in plan.towers)
    tower_of = plan.tower_of()
    for table in tables:  # shared tables' features together
        assert len({tower_of[f.name] for f in sites.features if f.table == table}) == 1
    assert plan.partitioner == name
    assert plan.lookup_imbalance <= plan.balance_bound
    assert plan.memory_imbalance <= plan.balance_bound
    assert plan.balance_bound == balanced_plan(sites, topology, {}).balance_bound


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("topology", ["2x1", "4x1"])
@pytest.mark.parametrize("partitioner", ["learned", "random"])
def test_plan_properties_and_determinism(partitioner, topology, name) -> None:
    model, inputs, sites = _zoo(name)
    topo = Topology.parse(topology)
    plans = [make_partition(partitioner, sites, topo, {}, model=model, example_inputs=inputs, seed=0)
             for _ in range(2)]
    _check_plan(plans[0], sites, topo, partitioner)
    assert plans[0] == plans[1]
    assert plans[0].to_json() == plans[1].to_json()
    assert TowerPlan.from_json(plans[0].to_json()) == plans[0]


def test_shared_table_stays_together() -> None:
    model, inputs, sites = _zoo("weighted_shared")
    for partitioner in ("learned", "random"):
        for seed in range(3):
            plan = make_partition(partitioner, sites, Topology.parse("4x1"), {}, model=model,
                                  example_inputs=inputs, seed=seed)
            assert plan.tower_of()["f_a"] == plan.tower_of()["f_b"]


def test_balanced_is_unchanged_through_make_partition() -> None:
    model, inputs, sites = _zoo("torchrec_dlrm")
    topo = Topology.parse("2x2")
    plan = make_partition("balanced", sites, topo, {}, model=None, example_inputs=None, seed=5)
    assert plan == balanced_plan(sites, topo, {})
    assert plan.partitioner == "balanced"


def test_random_depends_on_seed() -> None:
    model, inputs, sites = _planted()  # 8 tables
    topo = Topology.parse("4x1")
    plans = {seed: random_plan(sites, topo, {}, seed=seed) for seed in range(3)}
    for plan in plans.values():
        _check_plan(plan, sites, topo, "random")
    assert plans[0] != plans[1]
    assert random_plan(sites, topo, {}, seed=1) == plans[1]


def test_repair_moves_units_into_the_limits() -> None:
    """Round-robin can break the bound; the repair step (moves and swaps) must fix it."""
    cost = mem = [0.25, 0.25, 0.25, 0.25]
    state = Assignment([0, 0, 0, 1], 2, cost, mem, [[0.0] * 4 for _ in range(4)], (1.0, 1.0))
    assert state.violation() > 0
    assert state.repair(16)
    assert sorted(state.counts) == [2, 2] and state.violation() == 0.0
    stuck = Assignment([0, 1], 2, [0.9, 0.1], [0.9, 0.1], [[0.0, 0.0], [0.0, 0.0]], (1.0, 1.0))
    assert not stuck.repair(16)  # no step can fit a 0.9 unit under 0.5 per tower


def test_learned_within_slack_of_balanced() -> None:
    for name in ZOO:
        model, inputs, sites = _zoo(name)
        for topology in ("2x1", "3x1"):
            topo = Topology.parse(topology)
            balanced = balanced_plan(sites, topo, {})
            plan = learned_plan(sites, topo, {}, model=model, example_inputs=inputs)
            assert plan.lookup_imbalance <= balanced.lookup_imbalance + DEFAULT_BALANCE_SLACK + 1e-4
            assert plan.memory_imbalance <= balanced.memory_imbalance + DEFAULT_BALANCE_SLACK + 1e-4
            loose = learned_plan(sites, topo, {}, model=model, example_inputs=inputs, balance_slack=None)
            _check_plan(loose, sites, topo, "learned")


def test_partitioners_on_lopsided_tables() -> None:
    """One table holds most of the memory (plain model, export route)."""
    spec = PlainSpec(tables=tuple(PlainTable(400 if i == 0 else 5, 4, "sum") for i in range(7)),
                     feature_table=tuple(range(7)), feature_weighted=(False,) * 7, max_lengths=(2,) * 7,
                     num_hosts=3, local_world_size=1, batch_size=4, seed=0)
    model = build_plain_model(spec)
    inputs = make_plain_inputs(spec, 4, 0, min_length=1)
    sites = _sites(model, inputs)
    for seed in range(5):
        for partitioner in ("random", "learned"):
            plan = make_partition(partitioner, sites, Topology.parse("3x1"), {}, model=model,
                                  example_inputs=inputs, seed=seed)
            _check_plan(plan, sites, Topology.parse("3x1"), partitioner)


# ---------------------------------------------------------------- errors


def test_learned_needs_example_inputs() -> None:
    model, _, sites = _zoo("torchrec_dlrm")
    with pytest.raises(DMTError, match="needs example_inputs"):
        make_partition("learned", sites, Topology.parse("2x1"), {}, model=model, example_inputs=None, seed=0)


def test_unknown_partitioner() -> None:
    _, _, sites = _zoo("torchrec_dlrm")
    with pytest.raises(DMTError, match="register_partitioner") as info:
        make_partition("metis", sites, Topology.parse("2x1"), {}, model=None, example_inputs=None, seed=0)
    assert all(name in str(info.value) for name in ("balanced", "learned", "random"))
    assert {"balanced", "learned", "random"} <= set(PARTITIONERS.names())


# ---------------------------------------------------------------- affinity


def test_feature_embeddings_match_the_lookups() -> None:
    """KeyedTensor columns, including a key read by two tables (`key@table`)."""
    spec = TorchRecSpec(
        collections=(CollectionSpec("ebc0", False, (
            TableSpec("ta", 30, 4, "sum", ("x", "y")), TableSpec("tb", 30, 8, "mean", ("x",)),
            TableSpec("tc", 10, 2, "sum", ("z",))), ("z", "y", "x"), None),),
        max_lengths=((3, 3, 3),), num_hosts=2, local_world_size=1, batch_size=6, example_batch_size=6, seed=3)
    model = build_torchrec_model(spec)
    inputs = make_torchrec_inputs(spec, 6, 0)
    sites = _sites(model, inputs)
    got = feature_embeddings(model, sites, inputs)
    assert list(got) == [f.name for f in sites.features]
    columns = model.ebc0(inputs[1]).to_dict()
    by_feature = {f.name: (f.table.rpartition(".")[2], f.key) for f in sites.features}
    for name, (table, key) in by_feature.items():
        column = key if key != "x" else f"x@{table}"
        assert got[name].shape == (6, dict(ta=4, tb=8, tc=2)[table])
        assert torch.equal(got[name], columns[column].double())
    assert not torch.equal(got["x"][:, :4], got["ebc0:x"][:, :4])


def test_feature_embeddings_repeated_module_calls() -> None:
    """A plain module called three times gives features emb_l.0, emb_l.0@1, emb_l.0@2 (export route)."""
    spec = PlainSpec(tables=(PlainTable(20, 4, "sum"), PlainTable(10, 2, "mean")),
                     feature_table=(0, 1, 0, 0), feature_weighted=(False, False, True, False),
                     max_lengths=(2, 2, 2, 2), num_hosts=2, local_world_size=1, batch_size=5, seed=1)
    model = build_plain_model(spec)
    inputs = make_plain_inputs(spec, 5, 0, min_length=1)
    sites = _sites(model, inputs)
    got = feature_embeddings(model, sites, inputs)
    assert list(got) == ["emb_l.0", "emb_l.1", "emb_l.0@1", "emb_l.0@2"]
    dense, offsets, ids, weights = inputs
    with torch.no_grad():
        expected = [model.emb_l[0](ids[0], offsets[0]), model.emb_l[1](ids[1], offsets[1]),
                    model.emb_l[0](ids[2], offsets[2], per_sample_weights=weights[0]),
                    model.emb_l[0](ids[3], offsets[3])]
    for name, e in zip(got, expected):
        assert torch.allclose(got[name], e.double())


def test_feature_embeddings_restore_training_flags() -> None:
    model, inputs = torchrec_dlrm.build()
    sites = _zoo("torchrec_dlrm")[2]
    model.train()
    model.dense_arch.training = False
    before = [m.training for m in model.modules()]
    feature_embeddings(model, sites, inputs)
    assert [m.training for m in model.modules()] == before


def test_affinity_properties() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 8, generator=g), torch.randn(256, 4, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    aff = feature_affinity({"a": a, "a2": 5 * a @ rotation, "b": b, "zero": torch.zeros(256, 4)})
    assert aff[("a", "a2")] == pytest.approx(1.0)  # invariant to rotation and scale
    assert aff[("a", "b")] < 0.05  # independent
    assert aff[("a", "zero")] == 0.0  # constant embeddings carry nothing
    assert all(aff[(x, y)] == aff[(y, x)] and 0.0 <= aff[(x, y)] <= 1.0 for x, y in aff)
    assert feature_affinity({"a": a, "b": b}) == feature_affinity({"a": a, "b": b})


# ---------------------------------------------------------------- planted structure


def test_interaction_affinity_sees_only_planted_pairs() -> None:
    model, inputs, sites = _planted()
    aff = interaction_affinity(model, sites, inputs)
    within = [aff[(f"f{i}", f"f{j}")] for g in ((0, 1, 2, 3), (4, 5, 6, 7)) for i in g for j in g if i < j]
    cross = [aff[(f"f{i}", f"f{j}")] for i in range(4) for j in range(4, 8)]
    assert min(within) > 0.05 and max(within) == 1.0  # divided by the largest pair
    assert max(cross) < 1e-6  # additive pairs: the double difference is 0 (up to float32 rounding)
    assert all(aff[(a, b)] == aff[(b, a)] for a, b in aff)
    assert interaction_affinity(model, sites, inputs) == aff  # deterministic
    # Embedding similarity cannot see these groups: the ids are drawn independently.
    cka = feature_affinity(feature_embeddings(model, sites, inputs))
    assert max(cka.values()) < 0.1


def test_interaction_affinity_of_one_sample_is_zero(caplog) -> None:
    model, _, sites = _planted()
    one = _planted_inputs([[k] for k in range(8)], batch=1)
    assert set(interaction_affinity(model, sites, one).values()) == {0.0}
    assert "needs >= 2" in caplog.text


def test_interaction_affinity_needs_a_per_sample_output() -> None:
    class Summed(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, dense, sparse):
            return {"total": self.inner(dense, sparse).sum()}

    model, inputs, _ = _planted()
    wrapped = Summed(model)
    sites = _sites(wrapped, inputs)
    with pytest.raises(DMTError, match="without a per-sample tensor"):
        interaction_affinity(wrapped, sites, inputs)


def test_learned_recovers_planted_groups() -> None:
    model, inputs, sites = _planted()
    topo = Topology.parse("2x1")
    aff = interaction_affinity(model, sites, inputs)
    plan = learned_plan(sites, topo, {}, model=model, example_inputs=inputs, seed=0)
    groups = sorted(sorted(t.features) for t in plan.towers)
    assert groups == [["f0", "f1", "f2", "f3"], ["f4", "f5", "f6", "f7"]]
    assert plan.lookup_imbalance == 1.0 and plan.memory_imbalance == 1.0
    assert within_tower_affinity([t.features for t in plan.towers], aff) == pytest.approx(1.0)
    balanced = balanced_plan(sites, topo, {})
    assert sorted(sorted(t.features) for t in balanced.towers) != groups  # balanced ignores affinity
    assert within_tower_affinity([t.features for t in balanced.towers], aff) < 0.5


def test_learned_recovers_interleaved_groups_on_four_towers() -> None:
    """Four planted pairs, interleaved in model order, on four towers."""
    pairs = [[0, 4], [1, 5], [2, 6], [3, 7]]
    model = _interacting_model(pairs)
    inputs = _planted_inputs([[k] for k in range(8)], seed=1)
    sites = _sites(model, inputs)
    plan = learned_plan(sites, Topology.parse("4x1"), {}, model=model, example_inputs=inputs, seed=0)
    assert sorted(sorted(t.features) for t in plan.towers) == [[f"f{i}", f"f{j}"] for i, j in pairs]
    for seed in (1, 2):
        again = learned_plan(sites, Topology.parse("4x1"), {}, model=model, example_inputs=inputs, seed=seed)
        assert again.towers == plan.towers
