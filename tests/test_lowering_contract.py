"""The typed hand-off the runtime lowers from (no process group needed).

* `DMTResult.towers` says where each tower's modules are: every recorded collection is the
  tower's slice holding exactly the tables the plan gives the tower, and no other slice exists;
* the lowering picks each exchange's process group from the graph's `group=` argument, and
  refuses a collection whose exchanges name different kinds or a kind it has no group for.
"""

from __future__ import annotations

import operator

import pytest
import torch.fx as fx

import dmt_fx
from dmt_fx.ir import ops
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.names import GroupKind
from dmt_fx.runtime.groups import ProcessGroups
from dmt_fx.runtime.lowering import one_group
from examples import two_collections


def _transform(**kwargs: object) -> fx.GraphModule:
    model, example = two_collections.build()
    return dmt_fx.transform(model, "2x2", example_inputs=example, **kwargs)


def test_result_records_each_towers_collections_and_tower_module() -> None:
    gm = _transform()
    result = dmt_fx.dmt_result(gm)
    assert [t.tower for t in result.towers] == [t.index for t in result.plan.towers]
    for tower in result.plan.towers:
        record = result.tower_modules(tower.index)
        assert record.host == tower.host
        recorded_tables = set()
        for site, path in record.collections.items():
            ebc = gm.get_submodule(path)
            recorded_tables |= {f"{site}.embedding_bags.{c.name}" for c in ebc.embedding_bag_configs()}
        assert recorded_tables == set(tower.tables)
        assert record.tower_module in {n.target for n in gm.graph.nodes if n.op == "call_module"}
    slices = {name for name, _ in gm.named_modules() if name.startswith("dmt_towers.") and name.count(".") == 2}
    assert slices == {p for t in result.towers for p in t.collections.values()}


def test_a_tower_without_a_feature_of_a_collection_records_no_slice_of_it() -> None:
    # every feature of item_ebc on tower 0, every feature of user_ebc on tower 1
    plan = {"topology": "2x2", "towers": [{"host": 0, "features": ["i0", "i1", "i2"]},
                                          {"host": 1, "features": ["u0", "u1"]}]}
    result = dmt_fx.dmt_result(_transform(plan=plan))
    assert list(result.tower_modules(0).collections) == ["item_ebc"]
    assert list(result.tower_modules(1).collections) == ["user_ebc"]


def _exchanges(*groups: str) -> list[fx.Node]:
    graph = fx.Graph()
    x = graph.placeholder("x")
    nodes = [graph.call_function(ops.peer_input_exchange, ((x,),), {"tower": i, "host": i, "group": g})
             for i, g in enumerate(groups)]
    graph.output(tuple(graph.call_function(operator.getitem, (n, 0)) for n in nodes))
    return nodes


def test_one_group_reads_the_group_argument() -> None:
    assert one_group(_exchanges(GroupKind.PEER, GroupKind.PEER)) == GroupKind.PEER
    assert one_group(_exchanges(GroupKind.INTRA_HOST)) == GroupKind.INTRA_HOST


def test_one_group_refuses_exchanges_on_different_groups() -> None:
    with pytest.raises(DMTError, match="group kinds"):
        one_group(_exchanges(GroupKind.PEER, GroupKind.INTRA_HOST))


def test_a_group_kind_without_a_group_is_refused() -> None:
    groups = ProcessGroups({GroupKind.PEER: object()})
    assert groups.of(GroupKind.PEER) is groups.by_kind[GroupKind.PEER]
    with pytest.raises(DMTError, match="'cross_rack'"):
        groups.of("cross_rack")
