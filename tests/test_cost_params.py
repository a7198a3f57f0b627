"""The one step model's parameters: fitted by the sweep, saved as JSON, loaded by plan="auto";
and the cost package's place below the compiler."""

from __future__ import annotations

import ast
import copy
import json
import math
import os
from pathlib import Path

import pytest

import dmt_fx
from dmt_fx.cli.main import main
from dmt_fx.compiler.auto_plan import AutoOptions, auto_plan
from dmt_fx.compiler.tower_modules.base import tower_module_kind
from dmt_fx.cost import DEFAULT_PARAMS, SCHEMA, CostParams, Tier, Tiers, load_params
from dmt_fx.cost.sweep import cost_params, evaluate_sweep, sweep_tiers
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.topology import Topology
from dmt_fx.models.zoo import default_dlrm

REPO = Path(__file__).resolve().parent.parent
RECORDED = REPO / "benchmarks" / "recorded" / "cost_sweep.json"


@pytest.fixture(scope="module")
def dlrm():
    model, inputs = default_dlrm()
    sites = dmt_fx.dmt_result(dmt_fx.transform(copy.deepcopy(model), "4x1", example_inputs=inputs)).sites
    return model, inputs, sites


def _auto(dlrm, params=None, kind: str = "dot"):
    """plan="auto" on 4x1 with a compressing kind: c > 1 competes (no model given: no affinity
    to measure, so no quality refusal either; the step times are what this file is about)."""
    _, inputs, sites = dlrm
    pooling = {f.name: 1.0 for f in sites.features}
    return auto_plan(sites, Topology.parse("4x1"), pooling, kind=tower_module_kind(kind), model=None,
                     example_inputs=inputs, options=AutoOptions(quality_budget=0.0, cost_params=params))


@pytest.fixture(scope="module")
def default(dlrm):
    return _auto(dlrm)


def _write(tmp_path, payload) -> str:
    path = tmp_path / "params.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return str(path)


def test_default_params_are_the_model_at_face_value(dlrm, default):
    explicit = _auto(dlrm, CostParams())
    assert [c.step_s for c in default.candidates] == [c.step_s for c in explicit.candidates]
    assert default.options.params == DEFAULT_PARAMS and default.to_dict()["cost_params"]["kappa_compute"] == 1.0


def test_a_params_file_changes_the_predicted_step_times(dlrm, default, tmp_path):
    path = _write(tmp_path, {"schema": SCHEMA, "kappa_compute": 2.0, "kappa_inter": 1.0,
                             "overhead_per_collective_s": 1e-3})
    fitted = _auto(dlrm, path)
    assert fitted.options.params.kappa_compute == 2.0
    for before, after in zip(default.candidates, fitted.candidates):
        assert after.step_s > before.step_s
        # 4 hosts, 1 rank each: 3 peer collectives per step (lengths and ids in one, pooled
        # both ways), none inside
        assert after.breakdown["overhead"] == pytest.approx(3e-3)
        assert after.breakdown["lookup"] == 2 * before.breakdown["lookup"]
        assert after.breakdown["cross"] == before.breakdown["cross"]
    assert fitted.to_dict()["cost_params"]["overhead_per_collective_s"] == 1e-3


def test_params_that_make_another_candidate_cheaper_change_the_choice(dlrm, default):
    assert default.compression > 1  # compressing pays on the cross-host wire at face value
    free_wire = _auto(dlrm, CostParams(kappa_inter=0.0))  # the cross-host exchanges cost nothing
    assert free_wire.compression == 1  # then the tower module's work is all c > 1 adds
    slow_links = Tiers(Tier(5e-6, 450e9), Tier(1e-3, 1e6))  # measured links, 1 MB/s across hosts
    assert _auto(dlrm, CostParams(tiers=slow_links)).links == slow_links.to_dict()


@pytest.mark.parametrize("payload, found", [
    ("{not json", "not JSON"),
    ("[1, 2]", "a JSON list"),
    ({"schema": "other/1"}, "schema 'other/1'"),
    ({"schema": SCHEMA, "kappa_compute": -1.0}, "kappa_compute=-1.0"),
    ({"schema": SCHEMA, "kappa_inter": "0.9"}, "kappa_inter='0.9'"),
    ({"schema": SCHEMA, "overhead_per_collective_s": float("nan")}, "overhead_per_collective_s=nan"),
    ({"schema": SCHEMA, "kapa_compute": 1.0}, "unknown field(s) ['kapa_compute']"),
    ({"schema": SCHEMA, "tiers": {"intra": {"alpha_s": 0.0}}}, "tiers="),
    ({"schema": SCHEMA, "tiers": {"intra": {"beta_Bps": 0.0}, "inter": {"beta_Bps": 1e9}}}, "tiers.intra.beta_Bps=0.0"),
])
def test_a_malformed_params_file_is_a_dmt_error(tmp_path, payload, found):
    path = _write(tmp_path, payload)
    with pytest.raises(DMTError) as err:
        AutoOptions(cost_params=path)
    assert found in err.value.found and err.value.expected and err.value.fixes


def test_a_missing_params_file_or_a_wrong_type_is_a_dmt_error(tmp_path):
    with pytest.raises(DMTError, match="readable JSON file"):
        AutoOptions(cost_params=str(tmp_path / "absent.json"))
    with pytest.raises(DMTError, match="a CostParams, a JSON file path or None"):
        AutoOptions(cost_params=3)


def test_cli_plan_auto_takes_a_params_file(tmp_path, capsys):
    target = ["plan", "dmt_fx.models.zoo:default_dlrm", "--topology", "2x2", "--auto"]
    bad = _write(tmp_path, {"schema": SCHEMA, "kappa_inter": -2})
    assert main([*target, "--cost-params", bad]) == 2  # refused before the model is built
    assert "kappa_inter=-2" in capsys.readouterr().err
    good = _write(tmp_path, {"schema": SCHEMA, "overhead_per_collective_s": 1e-3})
    assert main([*target, "--cost-params", good, "--format", "json"]) == 0
    auto = json.loads(capsys.readouterr().out)["auto"]
    assert auto["cost_params"]["overhead_per_collective_s"] == 1e-3
    assert all(c["breakdown"]["overhead"] > 0 for c in auto["candidates"])


@pytest.mark.skipif(not RECORDED.exists(), reason="no recorded sweep")
def test_the_sweeps_fit_round_trips_through_its_file(tmp_path):
    sweep = json.loads(RECORDED.read_text())
    result = evaluate_sweep(sweep, train="batch=256")
    probed = next(sweep_tiers(p) for p in sweep["points"] if sweep_tiers(p) is not None)
    params = cost_params(result, probed, split="headline")
    assert [getattr(params, k) for k in ("kappa_compute", "kappa_inter", "overhead_per_collective_s")] == \
        [result["params"][k] for k in ("kappa_compute", "kappa_inter", "overhead_per_collective_s")]
    # the probe measures alpha per all-to-all: the file charges it per collective call
    assert params.tiers.inter.alpha_s == 0.0 and params.tiers.inter.alpha_collective_s == probed.inter.alpha_s
    params.save(tmp_path / "fit.json")
    loaded = load_params(os.fspath(tmp_path / "fit.json"))
    assert loaded == params and loaded.source["held_out_mape_pct"] == result["held_out_mape_pct"]
    assert math.isclose(AutoOptions(cost_params=tmp_path / "fit.json").params.kappa_inter, params.kappa_inter)
    free = CostParams(tiers=Tiers(Tier(0.0, math.inf, 3e-4), probed.inter))  # the probe's fit of free bytes
    free.save(tmp_path / "free.json")
    assert load_params(os.fspath(tmp_path / "free.json")).tiers == free.tiers


def test_the_cost_package_imports_only_the_ir_and_libraries():
    """plan="auto" (the compiler) and the runtime's qcomms import dmt_fx.cost: it must sit below both."""
    for path in sorted((REPO / "dmt_fx" / "cost").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            inside = [n for n in names if n.split(".")[0] == "dmt_fx"]
            assert all(n.startswith(("dmt_fx.ir", "dmt_fx.cost")) for n in inside), (path.name, inside)
