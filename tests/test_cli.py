"""The `dmt-fx` command line: diff and plan verbs, target loading, user errors."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dmt_fx.cli.main import main
from dmt_fx.jobs.target import TargetError, load_target

ROOT = Path(__file__).resolve().parents[1]
DLRM = str(ROOT / "examples" / "torchrec_dlrm.py") + ":build"
FEATURES = ["f0", "f1", "f2", "f3"]


def run_json(capsys, *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def assert_user_error(capsys, argv: list[str]) -> str:
    """Exit 2, one line `dmt-fx: error: <found>; expected <what>; fix: <how>`, no traceback."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dmt-fx: error: ") and "; expected " in lines[0], lines
    assert captured.err.count("dmt-fx: error:") == 1
    assert "Traceback" not in captured.err + captured.out
    assert captured.out == ""
    return captured.err


# ---------------------------------------------------------------- diff


@pytest.fixture(scope="module")
def dlrm_diff() -> dict:
    # One transform shared by the diff tests; capsys is function-scoped, so capture here.
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["diff", DLRM, "--topology", "2x4", "--format", "json"]) == 0
    return json.loads(buffer.getvalue())


def test_diff_json_counts_and_towers(dlrm_diff):
    assert dlrm_diff["inserted"] > 0
    assert set(dlrm_diff["towers"]) == {"0", "1"}
    removed = [r["name"] for r in dlrm_diff["original"] if r["status"] == "removed"]
    assert removed == ["sparse_arch_embedding_bag_collection"]
    assert dlrm_diff["removed"] == 1


def test_diff_json_rows(dlrm_diff):
    rows = {r["name"]: r for r in dlrm_diff["rewritten"]}
    exchange = rows["peer_input_exchange"]
    assert exchange["status"] == "inserted" and exchange["role"] == "peer_input_exchange"
    assert exchange["tower"] == 0 and exchange["target"] == "dmt_fx.ir.ops.peer_input_exchange"
    assert rows["relu"]["status"] == "kept" and rows["relu"]["target"] == "torch.relu"
    inserted = {r["name"] for r in rows.values() if r["status"] == "inserted"}
    grouped = {n for names in dlrm_diff["towers"].values() for n in names} | set(dlrm_diff["shared"])
    assert grouped == inserted and len(inserted) == dlrm_diff["inserted"]
    assert sorted(rows[n]["role"] for n in dlrm_diff["shared"]) == ["merge", "validate_inputs"]


def test_diff_rich(capsys):
    assert main(["diff", DLRM, "--topology", "2x4"]) == 0
    out = capsys.readouterr().out
    assert "peer_input_exchange" in out
    assert "tower 0 (host 0)" in out and "tower 1 (host 1)" in out
    assert "sparse_arch_embedding_bag_collection" in out  # the removed lookup, on the left


# ---------------------------------------------------------------- plan


def test_plan_json_fields(capsys):
    data = run_json(capsys, "plan", DLRM, "--topology", "2x4", "--format", "json", "--batch-size", "64")
    for key in ("topology", "partitioner", "fingerprint", "lookup_imbalance", "memory_imbalance",
                "balance_bound", "towers", "collectives", "interaction", "route", "plan"):
        assert key in data
    assert data["topology"] == "2x4" and data["route"] == "symbolic"
    assert sorted(f for t in data["towers"] for f in t["features"]) == FEATURES
    assert data["interaction"] == {"node": "inter_arch", "kind": "torchrec.InteractionArch"}
    assert len(data["collectives"]) == 2 * len(data["towers"])
    for tower in data["towers"]:
        kinds = sorted(c["kind"] for c in data["collectives"] if c["tower"] == tower["tower"])
        assert kinds == ["peer_input_exchange", "peer_output_exchange"]
    out = next(c for c in data["collectives"] if c["kind"] == "peer_output_exchange")
    # 2 features of dim 8, fp32, half the batch crosses hosts on 2 hosts.
    assert out["bytes_per_step"] == 64 * 2 * 8 * 4 // 2
    assert out["group"] == "cross-host" and out["direction"] == "forward"


def test_plan_with_tower_modules_and_partitioner(capsys):
    base = run_json(capsys, "plan", DLRM, "--topology", "2x4", "--format", "json", "--batch-size", "64")
    data = run_json(capsys, "plan", DLRM, "--topology", "2x4", "--format", "json", "--batch-size", "64",
                    "--partitioner", "learned", "--tower-module", "linear", "--compression", "2")
    assert data["partitioner"] == "learned" and data["changes_model"] and not base["changes_model"]
    assert sorted(f for t in data["towers"] for f in t["features"]) == FEATURES

    def out_bytes(d):
        return sum(c["bytes_per_step"] for c in d["collectives"] if c["kind"] == "peer_output_exchange")
    assert out_bytes(data) == out_bytes(base) // 2  # c = 2 halves what crosses hosts
    rich = main(["plan", DLRM, "--topology", "2x4", "--tower-module", "dot", "--compression", "2"])
    assert rich == 0 and "changes the model" in capsys.readouterr().out


def test_plan_bad_compression_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", DLRM, "--topology", "2x4", "--compression", "0"])
    assert exit_info.value.code == 2 and "positive integer" in capsys.readouterr().err


def test_plan_round_trip(capsys, tmp_path):
    data = run_json(capsys, "plan", DLRM, "--topology", "2x2", "--format", "json")
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(data["plan"]))
    again = run_json(capsys, "plan", DLRM, "--topology", "2x2", "--format", "json", "--plan", str(plan_file))
    assert [t["features"] for t in again["towers"]] == [t["features"] for t in data["towers"]]
    assert again["fingerprint"] == data["fingerprint"]


def test_plan_for_another_topology_is_refused(capsys, tmp_path):
    data = run_json(capsys, "plan", DLRM, "--topology", "2x2", "--format", "json")
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(data["plan"]))
    err = assert_user_error(capsys, ["plan", DLRM, "--topology", "4x2", "--plan", str(plan_file)])
    assert "topology 2x2" in err


def test_plan_rich(capsys):
    assert main(["plan", DLRM, "--topology", "2x2"]) == 0
    out = capsys.readouterr().out
    for text in ("towers", "collectives", "peer_output_exchange", "lookup imbalance", "cross-host"):
        assert text in out


def test_module_form_target(capsys):
    data = run_json(capsys, "plan", "examples.reference_dlrm:build", "--topology", "2x4", "--format", "json")
    assert data["route"] == "export"
    assert sorted(f for t in data["towers"] for f in t["features"]) == [f"emb_l.{i}" for i in range(5)]


# ---------------------------------------------------------------- targets and errors


def test_file_in_package_uses_relative_imports():
    model, inputs = load_target(str(ROOT / "examples" / "torchrec_dlrm_dcn.py") + ":build")
    assert type(model).__module__.startswith("torchrec") and isinstance(inputs, tuple)


def test_standalone_file_returning_bare_module(tmp_path):
    script = tmp_path / "loose_model.py"
    script.write_text("import torch\n\ndef make():\n    return torch.nn.Linear(2, 2)\n")
    model, inputs = load_target(f"{script}:make")
    assert inputs is None and model.in_features == 2


def test_loose_file_imports_the_working_directorys_packages(tmp_path, monkeypatch):
    (tmp_path / "proj_dmt_pkg").mkdir()
    (tmp_path / "proj_dmt_pkg" / "__init__.py").write_text("WIDTH = 3\n")
    (tmp_path / "scripts").mkdir()  # no __init__.py: a loose file, not part of a package
    script = tmp_path / "scripts" / "uses_project.py"
    script.write_text("import torch\nfrom proj_dmt_pkg import WIDTH\n\n"
                      "def make():\n    return torch.nn.Linear(WIDTH, 2)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    model, _ = load_target("scripts/uses_project.py:make")
    assert model.in_features == 3


@pytest.mark.parametrize("target, says", [
    ("examples/torchrec_dlrm.py", "without a ':factory' part"),
    ("no/such/file.py:build", "no file"),
    (f"{ROOT / 'examples' / 'torchrec_dlrm.py'}:no_such_factory", "has no attribute 'no_such_factory'"),
    ("examples.no_such_module:build", "ModuleNotFoundError"),
    ("examples.torchrec_dlrm:KEYS", "not callable"),
])
def test_bad_targets(capsys, target, says):
    assert says in assert_user_error(capsys, ["plan", target, "--topology", "2x4"])


def test_factory_returning_int(capsys, tmp_path):
    script = tmp_path / "int_factory.py"
    script.write_text("def make():\n    return 3\n")
    err = assert_user_error(capsys, ["diff", f"{script}:make", "--topology", "2x4"])
    assert "returns a value of type int" in err


def test_factory_raising(capsys, tmp_path):
    script = tmp_path / "raising_factory.py"
    script.write_text("def make():\n    raise RuntimeError('no GPU here')\n")
    err = assert_user_error(capsys, ["plan", f"{script}:make", "--topology", "2x4"])
    assert "RuntimeError: no GPU here" in err


def test_module_failing_on_import(capsys, tmp_path):
    script = tmp_path / "broken_import.py"
    script.write_text("import not_a_real_package_dmt\n")
    assert "ModuleNotFoundError" in assert_user_error(capsys, ["plan", f"{script}:build", "--topology", "2x4"])


def test_target_error_is_a_dmt_error():
    with pytest.raises(TargetError) as info:
        load_target("no_colon")
    assert info.value.fixes


def test_bad_topology(capsys):
    err = assert_user_error(capsys, ["plan", DLRM, "--topology", "2y4"])
    assert "'2y4'" in err


def test_missing_topology_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["plan", DLRM])
    assert info.value.code == 2
    assert "--topology" in capsys.readouterr().err


# ---------------------------------------------------------------- the installed command


@pytest.mark.distributed
def test_subprocess_plan_json():
    proc = subprocess.run(
        [sys.executable, "-m", "dmt_fx.cli.main", "plan", "examples/torchrec_dlrm.py:build",
         "--topology", "2x2", "--format", "json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["topology"] == "2x2" and data["plan"]["towers"]
