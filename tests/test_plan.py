"""Tower plans: the balanced partitioner's properties and validation of user plans."""

from __future__ import annotations

import json

import pytest

import dmt_fx
from dmt_fx import PlanError, TowerPlan
from examples import reference_dlrm, torchrec_dlrm, two_collections, weighted_shared


def _plan(module, topology="2x2"):
    model, inputs = module.build()
    gm = dmt_fx.transform(model, topology, example_inputs=inputs)
    return model, inputs, gm, dmt_fx.tower_plan(gm)


@pytest.mark.parametrize("module", [torchrec_dlrm, weighted_shared, two_collections, reference_dlrm])
@pytest.mark.parametrize("topology", ["1x2", "2x2", "3x1", "4x2"])
def test_balanced_plan_properties(module, topology) -> None:
    model, inputs, gm, plan = _plan(module, topology)
    sites = dmt_fx.dmt_result(gm).sites
    features = [f.name for f in sites.features]
    assert sorted(plan.features) == sorted(features)  # every feature exactly once
    units = {f.table for f in sites.features}
    assert len(plan.towers) == min(int(topology[0]), len(units))  # one tower per host by default
    assert [t.host for t in plan.towers] == list(range(len(plan.towers)))
    tower_of = plan.tower_of()
    for table in units:  # a table never spans towers
        assert len({tower_of[f.name] for f in sites.features if f.table == table}) == 1
    assert plan.lookup_imbalance <= plan.balance_bound
    assert plan.memory_imbalance <= plan.balance_bound


def test_shared_table_features_stay_together() -> None:
    *_, plan = _plan(weighted_shared, "4x1")
    tower_of = plan.tower_of()
    assert tower_of["f_a"] == tower_of["f_b"]


def test_plan_is_deterministic_and_round_trips() -> None:
    *_, first = _plan(torchrec_dlrm)
    *_, second = _plan(torchrec_dlrm)
    assert first == second
    assert TowerPlan.from_json(first.to_json()) == first
    assert TowerPlan.load(json.loads(first.to_json())) == first


def test_user_plan_is_used(tmp_path) -> None:
    model, inputs, _, plan = _plan(torchrec_dlrm)
    mine = {"topology": "2x2", "towers": [{"host": 1, "features": ["f0", "f1", "f2"]},
                                            {"host": 0, "features": ["f3"]}]}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(mine))
    for source in (mine, str(path), json.dumps(mine)):
        gm = dmt_fx.transform(model, "2x2", example_inputs=inputs, plan=source)
        got = dmt_fx.tower_plan(gm)
        assert [t.features for t in got.towers] == [("f0", "f1", "f2"), ("f3",)]
        assert [t.host for t in got.towers] == [1, 0]
        assert got.lookup_imbalance > 1.0  # loads are recomputed for user plans


def _bad(model, inputs, plan, match):
    with pytest.raises(PlanError, match=match) as info:
        dmt_fx.transform(model, "2x2", example_inputs=inputs, plan=plan)
    assert "Possible solutions:" in str(info.value)


def test_plan_errors(tmp_path) -> None:
    model, inputs, _, plan = _plan(torchrec_dlrm)
    towers = lambda *groups: {"towers": [{"host": i % 2, "features": g} for i, g in enumerate(groups)]}
    _bad(model, inputs, towers(["f0", "f1"], ["f2", "f3", "zz"]), r"unknown features \['zz'\]")
    _bad(model, inputs, towers(["f0", "f1"], ["f2"]), r"missing features \['f3'\]")
    _bad(model, inputs, towers(["f0", "f1"], ["f1", "f2", "f3"]), "more than one tower")
    _bad(model, inputs, {"towers": [{"host": 5, "features": ["f0", "f1", "f2", "f3"]}]}, "tower hosts")
    _bad(model, inputs, {"towers": []}, "no towers")
    _bad(model, inputs, {"tower": []}, "cannot be read")
    _bad(model, inputs, "{not json", "invalid JSON")
    _bad(model, inputs, str(tmp_path / "missing.json"), "cannot be read")
    # what `dmt-fx plan --topology 2x4` writes: the plan's topology and its fingerprint say 2x4
    other_topology = TowerPlan.from_dict({**plan.to_dict(), "topology": "2x4",
                                          "fingerprint": plan.fingerprint.replace("2x2", "2x4")})
    _bad(model, inputs, other_topology, "made for topology")
    other_model = TowerPlan.from_dict({**plan.to_dict(), "fingerprint": "0" * 16 + "-2x2"})
    _bad(model, inputs, other_model, "made for another model")


def test_table_spanning_towers_is_refused() -> None:
    model, inputs = weighted_shared.build()
    plan = {"towers": [{"host": 0, "features": ["f_a", "f_c"]}, {"host": 1, "features": ["f_b", "f_d"]}]}
    with pytest.raises(PlanError, match="spread over towers"):
        dmt_fx.transform(model, "2x2", example_inputs=inputs, plan=plan)
