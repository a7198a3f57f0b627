"""`dmt-fx run` and `dmt-fx demo` (the README's main job), short versions."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from dmt_fx.bench import emulated
from dmt_fx.cli.demo import emulated_args, shape_args
from dmt_fx.cli.main import main, parser
from dmt_fx.jobs.summary import summarize

FIELDS = {"variant", "topology", "first_loss", "final_loss", "cross_host_id_bytes", "cross_host_embedding_bytes",
          "cross_host_messages", "intra_host_bytes", "step_time_median_s", "step_time_iqr_s"}


@pytest.mark.distributed
def test_run_prints_dmt_and_the_baseline_side_by_side(tmp_path, capsys) -> None:
    code = main(["run", "--steps", "4", "--topology", "2x2", "--format", "json", "--out", str(tmp_path)])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in rows] == ["dmt", "flat-table_wise"]
    assert all(FIELDS <= set(r) for r in rows)
    dmt, flat = rows
    assert dmt["cross_host_messages"] < flat["cross_host_messages"]  # H-1 = 1 per collective vs N-L = 2
    assert all(0 < r["step_cpu_median_s"] and r["step_runqueue_wait_median_s"] >= 0 for r in rows)
    assert (tmp_path / "summary.json").exists()


@pytest.mark.distributed
def test_demo_main_job(tmp_path, capsys) -> None:
    """The default demo compares on 2x1 first (one core per rank), then on 2x2 (the hierarchy)."""
    code = main(["demo", "--steps", "3", "--network", "loopback", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    for text in ("graph diff", "peer_input_exchange", "tower plan", "bitwise equal", "flat-table_row_wise",
                 "best flat", "dmt-identity", "dmt-c4", "loopback", "CPU/step", "core wait",
                 emulated.TARGET, "one core per rank", "the host hierarchy"):
        assert text in out, text  # by default the demo trains bench emulated's workload
    assert out.index(f"{emulated.TARGET} on 2x1") < out.index(f"{emulated.TARGET} on 2x2")
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert all(r["batch_size"] == emulated.DEFAULT_BATCH and r["target"] == emulated.TARGET for r in rows)
    assert [r["topology"] for r in rows][0] == "2x1" and {r["topology"] for r in rows} == {"2x1", "2x2"}
    assert all((tmp_path / shape / "breakdown.png").stat().st_size > 0 for shape in ("2x1", "2x2"))


@pytest.mark.distributed
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
    assert not (tmp_path / "emulated" / "probe-shaped").exists()  # the demo probes once
    assert all(r["batch_size"] == emulated.DEFAULT_BATCH and r["model"]["tables"] == 16 for r in rows)


def test_demo_trains_the_bench_workload_and_probes_once() -> None:
    args = parser().parse_args(["demo"])
    assert (args.target, args.batch_size, args.topology) == (emulated.TARGET, emulated.DEFAULT_BATCH, None)
    options = emulated_args(shape_args(args, "2x2", several=True), ["dmt-identity", "flat-table_wise"])
    assert options.shaped_probe is False and options.batch_size == emulated.DEFAULT_BATCH
    assert options.target == emulated.TARGET and options.steps == args.steps
    assert parser().parse_args(["demo", "x.py:build"]).target == "x.py:build"  # TARGET still replaces it


def test_cpu_time_and_queue_wait_leave_out_the_same_steps_as_the_wall_time() -> None:
    """Per step: the slowest rank's CPU time and wait for a core, after warm-up, metered and profiled steps."""
    def rank(r: int) -> dict:
        return {"rank": r, "topology": "2x1", "losses": [1.0] * 6, "traffic": {"steps": 1},
                "step_times_s": [9.0, 9.0, 9.0, 1.0, 2.0, 3.0], "metered_steps": [1], "profiled_steps": [2],
                "step_cpu_s": [5.0, 5.0, 5.0, 0.1 * (r + 1), 0.2, 0.3 * (r + 1)],
                "step_runqueue_wait_s": [5.0, 5.0, 5.0, 0.0, 0.5, 0.0]}
    record = summarize("x", [rank(0), rank(1)], warmup=1)
    assert record["step_cpu_s"] == [0.2, 0.2, 0.6]
    assert record["step_cpu_median_s"] == 0.2 and record["step_runqueue_wait_median_s"] == 0.0


def test_run_with_a_bad_target_exits_2(tmp_path, capsys) -> None:
    assert main(["run", "nowhere.py:build", "--steps", "2", "--out", str(tmp_path)]) == 2
    assert "dmt-fx: error:" in capsys.readouterr().err


def test_run_table_title_names_the_pipelining_mode() -> None:
    from dmt_fx.cli.run import run_title

    plain = run_title(parser().parse_args(["run", "--topology", "2x2", "--steps", "4"]))
    piped = run_title(parser().parse_args(["run", "--topology", "2x2", "--steps", "4", "--pipeline"]))
    assert plain.endswith("on 2x2, 4 steps, not pipelined")
    assert "every variant pipelined (flat: TorchRec's TrainPipelineSparseDist" in piped
