"""Structure of the SPTT rewrite (passes/sptt.py and the tower-modules pass after it).

On examples/torchrec_dlrm.py (symbolic capture) and examples/reference_dlrm.py (export
capture), topology 2x2 (two towers): node counts by DMT role, an inline golden of the
inserted nodes, provenance on every inserted node, the tower collections holding the
original table modules, and `disable_passes=["sptt"]` leaving a graph without DMT nodes.
"""

from __future__ import annotations

import collections
import copy
import functools
import importlib
import operator

import pytest
import torch
import torch.fx as fx

import dmt_fx
from dmt_fx.ir import ops
from dmt_fx.ir.names import GroupKind
from examples import reference_dlrm, torchrec_dlrm

EBC_PATH = "sparse_arch.embedding_bag_collection"
TOWER_EBC = "dmt_towers.tower_{}.sparse_arch__embedding_bag_collection"


def _target_name(node: fx.Node) -> str:
    if isinstance(node.target, str):
        return node.target
    return getattr(node.target, "__name__", None) or str(node.target)


def _dmt_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if "dmt" in n.meta]


def _roles(gm: fx.GraphModule) -> collections.Counter:
    return collections.Counter(n.meta["dmt"]["role"] for n in _dmt_nodes(gm))


@functools.lru_cache(maxsize=None)
def _build(name: str, disable: tuple[str, ...] = ()):
    """(original model, untouched copy, gm, example inputs); transforms are cached."""
    module = {"torchrec_dlrm": torchrec_dlrm, "reference_dlrm": reference_dlrm}[name]
    model, example = module.build(0)
    ref = copy.deepcopy(model)
    # Structure of the SPTT rewrite alone: the input validator has its own tests.
    gm = dmt_fx.transform(model, "2x2", example_inputs=example, disable_passes=list(disable),
                          validate_inputs=False)
    return model, ref, gm, example


# ---------------------------------------------------------------- TorchRec DLRM (symbolic)


def test_torchrec_role_counts() -> None:
    _, _, gm, _ = _build("torchrec_dlrm")
    assert dmt_fx.dmt_result(gm).route == "symbolic"
    assert len(dmt_fx.tower_plan(gm).towers) == 2
    assert _roles(gm) == {
        "select_features": 2,
        "peer_input_exchange": 2,
        "received_ids": 2,
        "tower_lookup": 2,
        "tower_module": 2,
        "peer_output_exchange": 2,
        "received_embeddings": 2,
        "merge": 1,
    }


def test_torchrec_golden_inserted_nodes() -> None:
    _, _, gm, _ = _build("torchrec_dlrm")
    got = [(n.op, _target_name(n), n.meta["dmt"]["role"], n.meta["dmt"].get("tower")) for n in _dmt_nodes(gm)]
    assert got == [
        ("call_function", "select_features", "select_features", 0),
        ("call_function", "peer_input_exchange", "peer_input_exchange", 0),
        ("call_function", "getitem", "received_ids", 0),
        ("call_module", TOWER_EBC.format(0), "tower_lookup", 0),
        ("call_module", "dmt_tower_modules.tower_0", "tower_module", 0),
        ("call_function", "peer_output_exchange", "peer_output_exchange", 0),
        ("call_function", "getitem", "received_embeddings", 0),
        ("call_function", "select_features", "select_features", 1),
        ("call_function", "peer_input_exchange", "peer_input_exchange", 1),
        ("call_function", "getitem", "received_ids", 1),
        ("call_module", TOWER_EBC.format(1), "tower_lookup", 1),
        ("call_module", "dmt_tower_modules.tower_1", "tower_module", 1),
        ("call_function", "peer_output_exchange", "peer_output_exchange", 1),
        ("call_function", "getitem", "received_embeddings", 1),
        ("call_function", "merge_keyed_tensors", "merge", None),
    ]
    # The plan behind it (balanced partitioner on seed 0's example batch).
    plan = dmt_fx.tower_plan(gm)
    assert [(t.index, t.host, t.features) for t in plan.towers] == [(0, 0, ("f1", "f3")), (1, 1, ("f0", "f2"))]


def test_torchrec_dataflow_and_arguments() -> None:
    _, _, gm, _ = _build("torchrec_dlrm")
    plan = dmt_fx.tower_plan(gm)
    kjt = [n for n in gm.graph.nodes if n.op == "placeholder"][1]
    by_role: dict[str, list[fx.Node]] = collections.defaultdict(list)
    for n in _dmt_nodes(gm):
        by_role[n.meta["dmt"]["role"]].append(n)
    for i, tower in enumerate(plan.towers):
        select = by_role["select_features"][i]
        assert select.target is ops.select_features and select.args == (kjt, tower.features)
        exchange_in = by_role["peer_input_exchange"][i]
        assert exchange_in.target is ops.peer_input_exchange
        assert exchange_in.args == ((select,),)
        assert exchange_in.kwargs == {"tower": i, "host": tower.host, "group": GroupKind.PEER}
        received = by_role["received_ids"][i]
        assert received.target is operator.getitem and received.args == (exchange_in, 0)
        lookup = by_role["tower_lookup"][i]
        assert lookup.args == (received,) and lookup.meta["dmt"]["features"] == tower.features
        module = by_role["tower_module"][i]
        assert module.args == (lookup,) and module.meta["dmt"]["pass"] == "tower_modules"
        exchange_out = by_role["peer_output_exchange"][i]
        assert exchange_out.target is ops.peer_output_exchange and exchange_out.args == (module,)
        assert exchange_out.kwargs == {"tower": i, "host": tower.host, "group": GroupKind.PEER}
        back = by_role["received_embeddings"][i]
        assert back.target is operator.getitem and back.args == (exchange_out, 0)
        for n in (select, exchange_in, received, lookup, module, exchange_out, back):
            assert n.meta["dmt"]["tower"] == i and n.meta["dmt"]["host"] == tower.host
    (merge,) = by_role["merge"]
    assert merge.target is ops.merge_keyed_tensors
    assert merge.args == (tuple(by_role["received_embeddings"]), ("f0", "f1", "f2", "f3"))
    assert merge.meta["dmt"]["origin"] == "sparse_arch_embedding_bag_collection"


def test_torchrec_original_collection_is_gone() -> None:
    _, _, gm, _ = _build("torchrec_dlrm")
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert EBC_PATH not in calls
    assert not any(t.startswith(EBC_PATH + ".") for t in calls)
    assert sum(t.startswith("dmt_towers.") for t in calls) == 2


def test_torchrec_tower_collections_hold_the_original_tables() -> None:
    model, _, gm, _ = _build("torchrec_dlrm")
    original = model.sparse_arch.embedding_bag_collection.embedding_bags
    plan = dmt_fx.tower_plan(gm)
    seen = []
    for tower in plan.towers:
        tower_ebc = gm.get_submodule(TOWER_EBC.format(tower.index))
        assert sorted(tower_ebc.embedding_bags) == sorted(f"t_{f}" for f in tower.features)
        for name, bag in tower_ebc.embedding_bags.items():
            assert bag is original[name], f"tower {tower.index} table {name} is a copy"
            assert bag.weight is original[name].weight
            seen.append(name)
        assert tower_ebc.is_weighted() == model.sparse_arch.embedding_bag_collection.is_weighted()
        assert list(tower_ebc._embedding_names) == list(tower.features)
    assert sorted(seen) == sorted(original), "every table in exactly one tower"


def test_torchrec_every_inserted_node_is_tagged() -> None:
    _, _, gm, _ = _build("torchrec_dlrm")
    _, _, baseline, _ = _build("torchrec_dlrm", ("sptt", "tower_modules"))
    _assert_inserted_nodes_tagged(gm, baseline)


def _assert_inserted_nodes_tagged(gm: fx.GraphModule, baseline: fx.GraphModule) -> None:
    """Nodes absent from the same capture without the rewrite are exactly the tagged ones."""
    before = {n.name for n in baseline.graph.nodes}
    inserted = [n for n in gm.graph.nodes if n.name not in before]
    assert inserted
    for n in inserted:
        meta = n.meta.get("dmt")
        assert isinstance(meta, dict), f"{n.name} ({n.op} {_target_name(n)}) carries no meta['dmt']"
        assert meta.get("pass") in ("sptt", "tower_modules"), f"{n.name}: pass {meta.get('pass')!r}"
        assert meta.get("role"), f"{n.name}: no role"
    assert {n.name for n in _dmt_nodes(gm)} == {n.name for n in inserted}
    assert not _dmt_nodes(baseline)


class _Recorder(fx.Interpreter):
    """Runs the graph node by node, keeping the value of every DMT node."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, object] = {}

    def run_node(self, n: fx.Node):
        value = super().run_node(n)
        if "dmt" in n.meta:
            self.values[n.name] = value
        return value


@pytest.mark.parametrize("name", ["torchrec_dlrm", "weighted_shared"])
def test_torchrec_tower_values_at_runtime(name: str) -> None:
    """Each tower receives exactly its features' ids (and weights) and returns their pooled rows."""
    module = importlib.import_module(f"examples.{name}")
    model, example = module.build(0)
    ref = copy.deepcopy(model)
    gm = dmt_fx.transform(model, "2x2", example_inputs=example, validate_inputs=False)
    dense, kjt = module.make_inputs(5, 7)
    recorder = _Recorder(gm)
    out = recorder.run(dense, kjt)
    assert torch.equal(out, ref(dense, kjt))
    original = kjt.to_dict()
    ebc = next(m for m in ref.modules() if type(m).__name__ == "EmbeddingBagCollection")
    pooled = ebc(kjt).to_dict()
    plan = dmt_fx.tower_plan(gm)
    nodes = {role: [n for n in _dmt_nodes(gm) if n.meta["dmt"]["role"] == role]
             for role in ("select_features", "tower_lookup", "merge")}
    for tower, select, lookup in zip(plan.towers, nodes["select_features"], nodes["tower_lookup"]):
        selected = recorder.values[select.name]
        assert list(selected.keys()) == list(tower.features)
        assert selected.stride() == 5
        for key, jt in selected.to_dict().items():
            assert torch.equal(jt.values(), original[key].values())
            assert torch.equal(jt.lengths(), original[key].lengths())
            if kjt.weights_or_none() is not None:
                assert torch.equal(jt.weights(), original[key].weights()), f"weights of {key} lost"
        if kjt.weights_or_none() is None:
            assert selected.weights_or_none() is None
        looked_up = recorder.values[lookup.name]
        assert list(looked_up.keys()) == list(tower.features)
        for key, value in looked_up.to_dict().items():
            assert torch.equal(value, pooled[key])
    (merge,) = nodes["merge"]
    merged = recorder.values[merge.name]
    assert list(merged.keys()) == list(pooled)
    assert merged.length_per_key() == ebc(kjt).length_per_key()
    assert torch.equal(merged.values(), ebc(kjt).values())


# ---------------------------------------------------------------- reference DLRM (export)


def test_reference_dlrm_role_counts() -> None:
    model, _, gm, _ = _build("reference_dlrm")
    assert dmt_fx.dmt_result(gm).route == "export"
    plan = dmt_fx.tower_plan(gm)
    assert len(plan.towers) == 2
    roles = _roles(gm)
    for role in ("peer_input_exchange", "peer_output_exchange", "tower_module"):
        assert roles[role] == 2, role
    assert roles["select_features"] == 0 and roles["merge"] == 0  # plain lookups: no KJT
    assert roles["received_ids"] == 2 * 5  # (indices, offsets) per table
    assert roles["received_embeddings"] == 5
    lookups = [n for n in _dmt_nodes(gm) if n.meta["dmt"]["role"] == "tower_lookup"]
    bag_ops = [n for n in lookups if n.target is torch.ops.aten.embedding_bag.padding_idx]
    assert len(bag_ops) == 5
    assert len({n.meta["dmt"]["origin"] for n in lookups}) == 5
    # Each tower's lookups read its own exchanged ids.
    for n in bag_ops:
        tower = n.meta["dmt"]["tower"]
        for arg in n.args[1:3]:
            assert arg.meta["dmt"]["role"] == "received_ids" and arg.meta["dmt"]["tower"] == tower
    # Lookups read the original model's weights (get_attr into shared parameters).
    for n in bag_ops:
        assert n.args[0].op == "get_attr"
        index = int(n.args[0].target.split(".")[1])  # emb_l.<k>.weight
        assert gm.get_parameter(n.args[0].target) is model.emb_l[index].weight
        assert f"emb_l.{index}" in plan.towers[n.meta["dmt"]["tower"]].features
    # No embedding_bag op outside the towers.
    all_bags = [n for n in gm.graph.nodes if n.target is torch.ops.aten.embedding_bag.padding_idx]
    assert all_bags == bag_ops


def test_reference_dlrm_golden_skeleton() -> None:
    _, _, gm, _ = _build("reference_dlrm")
    skeleton = [(n.meta["dmt"]["role"], n.meta["dmt"].get("tower")) for n in _dmt_nodes(gm)
                if n.meta["dmt"]["role"] in ("peer_input_exchange", "tower_module", "peer_output_exchange")]
    assert skeleton == [
        ("peer_input_exchange", 0), ("tower_module", 0), ("peer_output_exchange", 0),
        ("peer_input_exchange", 1), ("tower_module", 1), ("peer_output_exchange", 1),
    ]
    plan = dmt_fx.tower_plan(gm)
    assert [(t.host, t.features) for t in plan.towers] == [
        (0, ("emb_l.1", "emb_l.4")), (1, ("emb_l.0", "emb_l.2", "emb_l.3"))]


def test_reference_dlrm_every_inserted_node_is_tagged() -> None:
    _, _, gm, _ = _build("reference_dlrm")
    _, _, baseline, _ = _build("reference_dlrm", ("sptt", "tower_modules"))
    _assert_inserted_nodes_tagged(gm, baseline)


# ---------------------------------------------------------------- disabling the pass


@pytest.mark.parametrize("name", ["torchrec_dlrm", "reference_dlrm"])
def test_disabled_sptt_leaves_no_dmt_nodes(name: str) -> None:
    _, ref, gm, _ = _build(name, ("sptt",))
    assert not _dmt_nodes(gm)
    assert [r.name for r in dmt_fx.dmt_result(gm).passes] == ["tower_modules", "cleanup"]
    assert not any(n.op == "call_module" and str(n.target).startswith(("dmt_towers", "dmt_tower_modules"))
                   for n in gm.graph.nodes)
    assert not any(n.target in (ops.peer_input_exchange, ops.peer_output_exchange, ops.select_features,
                                ops.merge_keyed_tensors) for n in gm.graph.nodes)
    if name == "torchrec_dlrm":
        assert EBC_PATH in [n.target for n in gm.graph.nodes if n.op == "call_module"]
    module = {"torchrec_dlrm": torchrec_dlrm, "reference_dlrm": reference_dlrm}[name]
    for batch_size, seed in [(8, 1), (1, 2), (5, 3)]:
        x = module.make_inputs(batch_size, seed)
        assert torch.equal(ref(*x), gm(*x))
    assert list(gm.state_dict()) == list(ref.state_dict())


@pytest.mark.parametrize("weighted", [False, True])
def test_select_features_equals_torchrec_permute(weighted: bool) -> None:
    """The slice-and-concatenate selection returns what KeyedJaggedTensor.permute returns
    (keys, ids, lengths, weights, per-key lengths), empty bags and one-key towers included."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    g = torch.Generator().manual_seed(0)
    keys, batch = ["a", "b", "c", "d"], 3
    lengths = torch.randint(0, 3, (len(keys) * batch,), generator=g)
    lengths[batch:2 * batch] = 0  # feature "b" has only empty bags
    values = torch.randint(0, 50, (int(lengths.sum()),), generator=g)
    weights = torch.rand(values.numel(), generator=g) if weighted else None
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=keys, values=values, lengths=lengths, weights=weights)
    for tower in (["c", "a"], ["b"], ["d", "b", "a"], keys):
        got, want = ops.select_features(kjt, tower), kjt.permute([keys.index(k) for k in tower])
        assert got.keys() == want.keys() and got.length_per_key() == want.length_per_key()
        assert torch.equal(got.values(), want.values()) and torch.equal(got.lengths(), want.lengths())
        assert got.stride() == want.stride() and got.offset_per_key() == want.offset_per_key()
        if weighted:
            assert torch.equal(got.weights(), want.weights())
