"""One unit test per graph pass (passes/*.py), each on a small graph with a golden structure.

The graph before a pass is the one the passes before it leave (transform's order: sptt,
tower_modules, [interaction], cleanup, validate_inputs) on `Tiny`: a dense Linear and a
TorchRec EmbeddingBagCollection of two tables (f0 -> t0, f1 -> t1) concatenated into a
Linear, split over 2x1 with the plan f0 -> host 0, f1 -> host 1. Each test runs its pass
alone and asserts the node list after it (op, target, the `dmt` role the pass tags), plus
the edges the pass rewires. cleanup runs on a hand-built fx graph; sequence_towers (which
replaces tower_modules and interaction for seq_mean / seq_attention) on the corpus's pooled +
sequence model, recorded inside transform.
"""

from __future__ import annotations

import dataclasses
import operator

import torch
import torch.fx as fx
import torch.nn as nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dmt_fx import Topology
from dmt_fx.compiler.analysis import analyze
from dmt_fx.compiler.capture import capture
from dmt_fx.compiler.plans import validate_plan
from dmt_fx.compiler.tower_modules import tower_module_kind
from dmt_fx.compiler.transform import graph_passes, tower_specs
from dmt_fx.ir.plan import TowerPlan
from dmt_fx.passes.cleanup import cleanup_pass

PLAN = {"topology": "2x1", "towers": [{"host": 0, "features": ["f0"]}, {"host": 1, "features": ["f1"]}]}


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name=f"t{i}", embedding_dim=4, num_embeddings=10, feature_names=[f"f{i}"])
            for i in range(2)])
        self.dense = nn.Linear(3, 4)
        self.over = nn.Linear(12, 1)

    def forward(self, dense: torch.Tensor, kjt: KeyedJaggedTensor) -> torch.Tensor:
        return self.over(torch.cat([self.dense(dense), self.ebc(kjt).values()], dim=1))


def _inputs() -> tuple:
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["f0", "f1"], values=torch.tensor([1, 2, 3, 4]),
                                              lengths=torch.tensor([1, 1, 1, 1]))
    return torch.rand(2, 3), kjt


def before(name: str, tower_module: str = "identity", compression: int = 1) -> tuple[fx.GraphModule, object]:
    """Tiny captured, with the passes before `name` run; and the pass `name`, configured."""
    torch.manual_seed(0)
    inputs = _inputs()
    gm, route = capture(Tiny(), inputs)
    sites = analyze(gm, route)
    kind = tower_module_kind(tower_module)
    plan = dataclasses.replace(validate_plan(TowerPlan.load(PLAN), sites, Topology.parse("2x1"), {}),
                               changes_model=kind.changes_model)
    specs = tower_specs(plan, sites, compression, inputs, changes_model=kind.changes_model)
    for pass_name, run, _ in graph_passes(sites, plan, kind, specs, inputs):
        if pass_name == name:
            return gm, run
        gm = run(gm)
    raise AssertionError(f"no pass {name!r}")


def _target(n: fx.Node) -> str:
    return n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))


def structure(gm: fx.GraphModule) -> list[str]:
    """Each node as 'op target [role]' (the role a pass tagged it with, if any)."""
    return [f"{n.op} {_target(n)}" + (f" [{n.meta['dmt']['role']}]" if "dmt" in n.meta else "") for n in gm.graph.nodes]


def node(gm: fx.GraphModule, op: str, target: str) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == op and _target(n) == target]


CAPTURED = ["placeholder dense", "placeholder kjt", "call_module dense", "call_module ebc", "call_method values",
            "call_function cat", "call_module over", "output output"]


def _tower(t: int, module: bool) -> list[str]:
    return ["call_function select_features [select_features]",
            "call_function peer_input_exchange [peer_input_exchange]",
            "call_function getitem [received_ids]",
            f"call_module dmt_towers.tower_{t}.ebc [tower_lookup]",
            *([f"call_module dmt_tower_modules.tower_{t} [tower_module]"] if module else []),
            "call_function peer_output_exchange [peer_output_exchange]",
            "call_function getitem [received_embeddings]"]


def _split(module: bool) -> list[str]:
    return ["placeholder dense", "placeholder kjt", "call_module dense", *_tower(0, module), *_tower(1, module),
            "call_function merge_keyed_tensors [merge]", "call_method values", "call_function cat",
            "call_module over", "output output"]


def test_sptt_splits_the_lookup_into_towers_with_peer_exchanges() -> None:
    gm, sptt = before("sptt")
    assert structure(gm) == CAPTURED
    gm = sptt(gm)
    assert structure(gm) == _split(module=False)
    (merge,) = node(gm, "call_function", "merge_keyed_tensors")
    parts, keys = merge.args
    assert [p.meta["dmt"]["tower"] for p in parts] == [0, 1] and keys == ("f0", "f1")
    assert not hasattr(gm, "ebc"), "the original collection stays in the graph module"
    for t in (0, 1):  # the tower collections hold the original tables, not copies
        assert list(gm.get_submodule(f"dmt_towers.tower_{t}.ebc").embedding_bags) == [f"t{t}"]


def test_tower_modules_sit_between_each_tower_lookup_and_its_exchange() -> None:
    gm, tower_modules = before("tower_modules")
    assert structure(gm) == _split(module=False)
    gm = tower_modules(gm)
    assert structure(gm) == _split(module=True)
    for t, exchange in enumerate(node(gm, "call_function", "peer_output_exchange")):
        (module,) = exchange.args
        assert module.target == f"dmt_tower_modules.tower_{t}" and module.args[0].target == f"dmt_towers.tower_{t}.ebc"
        assert module.target in dict(gm.named_modules())


def test_interaction_reads_the_towers_outputs() -> None:
    gm, interaction = before("interaction", tower_module="linear", compression=2)
    assert structure(gm) == _split(module=True)
    gm = interaction(gm)
    tower_outputs = [s.replace("received_embeddings", "tower_output") for s in _tower(0, True)] + \
        [s.replace("received_embeddings", "tower_output") for s in _tower(1, True)]
    assert structure(gm) == ["placeholder dense", "placeholder kjt", "call_module dense", *tower_outputs,
                             "call_function cat", "call_module over", "output output"]
    (cat,) = node(gm, "call_function", "cat")
    assert [a.meta.get("dmt", {}).get("role") or a.target for a in cat.args[0]] == ["dense", "tower_output",
                                                                                    "tower_output"]
    assert gm.get_submodule("over").in_features == 4 + 2 + 2  # rebuilt for the compressed width


def test_cleanup_removes_dead_nodes_and_keeps_submodules() -> None:
    root = nn.Module()
    root.used, root.unused = nn.Linear(2, 2), nn.Linear(2, 2)
    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.call_method("size", (x,))  # a dead shape read, as tracing leaves them
    dead = graph.call_module("unused", (x,))
    graph.call_function(operator.add, (dead, 1))
    graph.output(graph.call_module("used", (x,)))
    gm = fx.GraphModule(root, graph)
    assert structure(gm) == ["placeholder x", "call_method size", "call_module unused", "call_function add",
                             "call_module used", "output output"]
    gm = cleanup_pass(gm)
    assert structure(gm) == ["placeholder x", "call_module used", "output output"]
    assert hasattr(gm, "unused"), "a submodule's parameters belong to the state_dict even when unused"


def test_validate_inputs_checks_every_input_right_after_the_last_one() -> None:
    gm, validate = before("validate_inputs")
    assert structure(gm) == _split(module=True)
    gm = validate(gm)
    assert structure(gm) == ["placeholder dense", "placeholder kjt",
                             "call_module dmt_input_validator [validate_inputs]", *_split(module=True)[2:]]
    (check,) = node(gm, "call_module", "dmt_input_validator")
    assert [a.name for a in check.args] == ["kjt", "dense"] and not check.users


def _sequence_tower(t: int, module: bool) -> list[str]:
    return ["call_function select_features [select_features]"] * 2 + [
        "call_function peer_input_exchange [peer_input_exchange]", *["call_function getitem [received_ids]"] * 2,
        f"call_module dmt_towers.tower_{t}.pooled [tower_lookup]", f"call_module dmt_towers.tower_{t}.sequences [tower_lookup]",
        *([f"call_module dmt_tower_modules.tower_{t} [tower_module]"] if module else []),
        "call_function peer_output_exchange [peer_output_exchange]", *["call_function getitem [received_embeddings]"] * 2]


def test_sequence_towers_feed_the_models_reads_with_the_reduced_columns(monkeypatch) -> None:
    """On the corpus's pooled + sequence model (a masked mean per sequence feature), 2x1,
    seq_mean: each tower reduces its sequences before its exchange, the towers' parts merge
    as KeyedTensors, and each masked mean becomes one reduced column."""
    import dmt_fx
    import dmt_fx.compiler.transform as transform_module
    from tests.harness.corpus.sequences import pooled_sequence

    seen: dict[str, list[str]] = {}
    run_passes = transform_module.run_passes

    def recording(gm, passes, **kwargs):
        def wrap(run):
            def run_and_record(graph_module):
                seen["before"] = structure(graph_module)
                out = run(graph_module)
                seen["after"], seen["cat"] = structure(out), [
                    _target(a) for a in node(out, "call_function", "cat")[0].args[0]]
                return out
            return run_and_record
        return run_passes(gm, [(n, wrap(r) if n == "sequence_towers" else r, c) for n, r, c in passes], **kwargs)

    monkeypatch.setattr(transform_module, "run_passes", recording)
    model, inputs = pooled_sequence()
    dmt_fx.transform(model, "2x1", example_inputs=inputs, tower_module="seq_mean")
    head = ["placeholder dense", "placeholder pooled", "placeholder sequences"]
    tail = ["call_module dense", "call_method values", "call_function cat", "call_module over.0", "call_module over.1",
            "call_module over.2", "output output"]
    before = seen["before"]
    assert before[:len(head) + 20] == head + _sequence_tower(0, False) + _sequence_tower(1, False)
    assert before[len(head) + 20:len(head) + 22] == ["call_function merge_keyed_tensors [merge]",
                                                     "call_function merge_jagged_dicts [merge]"]
    assert before.count("call_method to_padded_dense") == 2 and before.count("call_function truediv") == 2
    assert before[-len(tail):] == tail
    assert seen["after"] == head + _sequence_tower(0, True) + _sequence_tower(1, True) + [
        "call_function merge_keyed_tensors [merge]", "call_function merge_keyed_tensors [merge]",
        "call_function reduced_column", "call_function reduced_column", *tail]
    assert seen["cat"] == ["dense", "values", "reduced_column", "reduced_column"]
