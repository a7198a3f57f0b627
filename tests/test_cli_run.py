"""`dmt-fx run` and `dmt-fx demo` (the README's main job), short versions."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from dmt_fx.cli.main import main

FIELDS = {"variant", "topology", "first_loss", "final_loss", "cross_host_id_bytes", "cross_host_embedding_bytes",
          "cross_host_messages", "intra_host_bytes", "step_time_median_s", "step_time_iqr_s"}


def test_run_prints_dmt_and_the_baseline_side_by_side(tmp_path, capsys) -> None:
    code = main(["run", "--steps", "4", "--topology", "2x2", "--format", "json", "--out", str(tmp_path)])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in rows] == ["dmt", "flat-table_wise"]
    assert all(FIELDS <= set(r) for r in rows)
    dmt, flat = rows
    assert dmt["cross_host_messages"] < flat["cross_host_messages"]  # H-1 = 1 per collective vs N-L = 2
    assert (tmp_path / "summary.json").exists()


def test_demo_main_job(tmp_path, capsys) -> None:
    code = main(["demo", "--steps", "3", "--network", "loopback", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    for text in ("graph diff", "peer_input_exchange", "tower plan", "bitwise equal", "flat-table_row_wise",
                 "best flat", "dmt-identity", "dmt-c4", "loopback"):
        assert text in out, text
    assert (tmp_path / "breakdown.png").stat().st_size > 0


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"),
                    reason="needs root and iproute2 (ip, tc)")
@pytest.mark.slow
def test_demo_on_the_emulated_network(tmp_path, capsys) -> None:
    code = main(["demo", "--steps", "3", "--format", "json", "--out", str(tmp_path)])
    assert code == 0
    captured = capsys.readouterr().out
    assert "network: loopback" not in captured and "emulated hosts, inter-host" in captured
    rows = json.loads(captured[captured.index("[\n"):])
    variants = {r["variant"] for r in rows}
    assert {"dmt-identity", "dmt-c4", "flat-grid_shard", "torchrec-2d"} <= variants
    best = next(r for r in rows if r["is_best_flat"])
    assert best["cross_host_wire_share"] is not None
    assert all("breakdown_s" in r and "ideal_speedup_vs_best_flat" in r for r in rows)
    assert (tmp_path / "emulated.json").exists()


def test_run_with_a_bad_target_exits_2(tmp_path, capsys) -> None:
    assert main(["run", "nowhere.py:build", "--steps", "2", "--out", str(tmp_path)]) == 2
    assert "dmt-fx: error:" in capsys.readouterr().err
