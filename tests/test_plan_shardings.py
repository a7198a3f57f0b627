"""Per-tower sharding: a plan's `Tower.sharding` is executed, not just reported.

A host's towers share one sharded lookup, so a host takes the sharding its towers name
(towers naming none take it too; two different names on one host are refused when the plan
is made); a host whose towers name none gets `distribute(sharding=)`. The 2x2 run trains
table_wise on host 0 and row_wise on host 1 equal to single-process training, and the
checkpoint's shard layout (DCP metadata: one chunk per table whole, row ranges when split)
shows which sharding each host really ran: the worker's `--sharding` stays table_wise.
"""

from __future__ import annotations

import os

import pytest
import torch.distributed.checkpoint as dcp

import dmt_fx
from dmt_fx import PlanError, Topology, TowerPlan
from tests.harness.cases import Case, check_case
from tests.harness.launch import run_cases
from tests.harness.targets import dist_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = f"{ROOT}/tests/harness/targets/dist_models.py"
STEPS = 3
USER, ITEM = ("u0", "u1", "u2"), ("i0", "i1")


def mixed_plan(host0: str | None = "table_wise", host1: str | None = "row_wise") -> dict:
    return {"topology": "2x2", "towers": [{"host": 0, "features": list(USER), "sharding": host0},
                                          {"host": 1, "features": list(ITEM), "sharding": host1}]}


def test_sharding_round_trips_and_old_plans_read_none() -> None:
    plan = TowerPlan.from_dict(mixed_plan())
    assert [t.sharding for t in plan.towers] == ["table_wise", "row_wise"]
    assert TowerPlan.from_json(plan.to_json()) == plan
    old = mixed_plan()
    for tower in old["towers"]:
        del tower["sharding"]  # a plan written before the field
    assert [t.sharding for t in TowerPlan.from_dict(old).towers] == [None, None]
    assert TowerPlan.from_dict(old).sharding_of_host(1, "column_wise") == "column_wise"


def test_a_host_takes_its_towers_sharding_and_disagreement_is_refused() -> None:
    plan = {"topology": "2x2", "towers": [{"host": 0, "features": ["u0"], "sharding": "row_wise"},
                                          {"host": 0, "features": ["u1", "u2"]},  # takes the host's
                                          {"host": 1, "features": list(ITEM)}]}
    loaded = TowerPlan.from_dict(plan)
    assert [loaded.sharding_of_host(h, "table_wise") for h in (0, 1)] == ["row_wise", "table_wise"]
    plan["towers"][1]["sharding"] = "column_wise"
    with pytest.raises(PlanError, match=r"towers on host 0 with different shardings \['column_wise', 'row_wise'\]"):
        TowerPlan.from_dict(plan)


def test_transform_keeps_the_plans_shardings() -> None:
    model, inputs = dist_models.build()
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs, plan=mixed_plan())
    assert [t.sharding for t in dmt_fx.tower_plan(gm).towers] == ["table_wise", "row_wise"]


def _chunks(checkpoint: str, key: str) -> list[tuple[int, ...]]:
    """Row offsets of the shards DCP saved for one table."""
    meta = dcp.FileSystemReader(checkpoint).read_metadata().state_dict_metadata[key]
    return sorted(tuple(c.offsets) for c in meta.chunks)


def auto_k2_plan() -> dict:
    """plan="auto" with 2 towers per host: 4 towers on hosts [0, 0, 1, 1], shardings chosen."""
    model, inputs = dist_models.build()
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs, plan=dmt_fx.AutoOptions(towers_per_domain=(2,)))
    plan = dmt_fx.tower_plan(gm)
    assert [t.host for t in plan.towers] == [0, 0, 1, 1] and all(t.sharding for t in plan.towers)
    return plan.to_dict()


@pytest.mark.distributed
def test_per_host_sharding_trains_equal_to_single_process(tmp_path) -> None:
    cases = [Case("tw-host0-rw-host1", f"{MODELS}:build", lambda: dist_models.build()[0], dist_models.make_inputs,
                  mixed_plan()),
             Case("auto-k2", f"{MODELS}:build", lambda: dist_models.build()[0], dist_models.make_inputs,
                  auto_k2_plan())]
    result = run_cases(tmp_path, "2x2", cases, steps=STEPS)  # the worker's --sharding: table_wise
    assert result.ok, result.log_tail(60)
    for case in cases:
        out_diff, param_diff = check_case(result, case, Topology.parse("2x2").world_size, STEPS)
        print(f"2x2 {case.name}: max |output diff| {out_diff:.3g}, max |param diff| {param_diff:.3g}")
    case = cases[0]
    ckpt = os.path.join(result.out_dir, case.name, "ckpt")
    for key in USER:  # host 0, table_wise: each table whole, one chunk
        assert _chunks(ckpt, f"user_ebc.embedding_bags.t_{key}.weight") == [(0, 0)]
    rows = dist_models.ITEM["i0"][0]
    for key in ITEM:  # host 1, row_wise: the rows split over its 2 ranks
        assert _chunks(ckpt, f"item_ebc.embedding_bags.t_{key}.weight") == [(0, 0), (rows // 2, 0)]
