"""`benchmarks/cpu_bound.py`: the three speedups of a run's rows, worked out by hand."""

from __future__ import annotations

import json

import pytest

from benchmarks.cpu_bound import main, rows_of, targets


def record(variant: str, step: float, cpu: float, cross: float, **extra) -> dict:
    return {"variant": variant, "topology": "2x2", "ranks": 4, "step_time_median_s": step, "step_cpu_median_s": cpu,
            "cross_host_bytes": cross, "inter_host_rate_bytes_per_s": 10e6, **extra}


RUN = [record("flat-table_wise", 0.10, 0.040, 0.5e6), record("flat-grid_shard", 0.20, 0.080, 0.5e6),
       record("dmt-identity", 0.125, 0.050, 0.5e6), record("dmt-c4", 0.08, 0.032, 0.125e6),
       record("dmt-c4", 0.05, 0.02, 0.125e6, pipelined=True)]


def test_measured_bytes_and_cpu_speedups_against_the_best_flat_plan():
    rows = {r["variant"]: r for r in rows_of("run", {"cores": 2}, RUN)}
    assert "flat-table_wise" not in rows  # the best flat plan itself; the pipelined row is left out
    c4 = rows["dmt-c4"]
    assert c4["measured"] == pytest.approx(1.25)  # 0.10 / 0.08
    # flat's 0.5 MB at 10 MB/s is 50 ms of its 100 ms step; c4's 0.125 MB is 12.5 ms: 100 / 62.5
    assert c4["bytes"] == pytest.approx(1.6)
    assert c4["cpu"] == pytest.approx(1.25)  # 40 / 32 ms
    assert c4["busy"] == pytest.approx(0.8)  # 4 ranks x 32 ms / (2 cores x 80 ms)
    assert rows["dmt-identity"]["measured"] == pytest.approx(0.8) and rows["dmt-identity"]["bytes"] == 1.0
    met = targets(list(rows.values()))
    assert met["dmt-identity"]["met"] == 0 and met["dmt-c4"]["met"] == 0  # 0.8 < 1.0, 1.25 < 1.5


def test_the_program_writes_json_with_both_errors(tmp_path):
    report = tmp_path / "emulated.json"
    report.write_text(json.dumps({"network": {}, "records": RUN}))
    out = tmp_path / "cpu_bound.json"
    assert main([str(report), "--out", str(out), "--png", str(tmp_path / "cpu_bound.png")]) == 0
    summary = json.load(open(out))["summary"]
    # grid: measured 0.5, bytes 1.0, cpu 0.5; identity 0.8 / 1.0 / 0.8; c4 1.25 / 1.6 / 1.25
    assert summary["mean_error"]["cpu"] == pytest.approx(0.0)
    assert summary["mean_error"]["bytes"] == pytest.approx((1.0 + 0.25 + 0.28) / 3)
    assert (tmp_path / "cpu_bound.png").stat().st_size > 0


def test_a_report_of_another_kind_is_a_clear_error(tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": []}))
    assert main([str(other), "--out", str(tmp_path / "o.json")]) == 2
    assert main([str(tmp_path / "missing.json"), "--out", str(tmp_path / "o.json")]) == 2
    assert "expected emulated.json files of `dmt-fx bench emulated`" in capsys.readouterr().err
