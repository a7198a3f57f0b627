"""Resume after a crash, and determinism: same seed and topology give bitwise-equal losses;
a job whose rank is SIGKILLed mid-run, rerun with the very same command, resumes from its
last checkpoint and continues exactly like an uninterrupted run (no step lost or applied
twice)."""

from __future__ import annotations

import os

import pytest

from dmt_fx import Topology
from tests.harness.launch import launch_job

pytestmark = pytest.mark.distributed  # every test here starts processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, EVERY = 8, 2


def _job(out: str, ckpt: str | None = None) -> list[str]:
    args = ["--target", f"{ROOT}/examples/torchrec_dlrm.py:build", "--topology", "2x2", "--steps", str(STEPS),
            "--batch-size", "4", "--optimizer", "adagrad", "--lr", "0.05", "--out", out, "--timeout-s", "60"]
    return args + (["--checkpoint-dir", ckpt, "--checkpoint-every", str(EVERY)] if ckpt else [])


def _losses(result) -> tuple[int, list[float]]:
    rank0 = result.ranks()[0]
    return rank0["first_step"], rank0["losses"]


def test_same_seed_same_topology_bitwise_equal_losses(tmp_path) -> None:
    runs = [launch_job(Topology(2, 2), _job(str(tmp_path / f"run{i}")), str(tmp_path / f"run{i}"), deadline_s=240)
            for i in range(2)]
    assert all(r.ok for r in runs), runs[0].log_tail()
    assert _losses(runs[0]) == _losses(runs[1])  # bitwise: == on the floats


def test_resume_after_a_killed_rank(tmp_path, monkeypatch) -> None:
    straight = launch_job(Topology(2, 2), _job(str(tmp_path / "straight"), str(tmp_path / "ckpt_a")),
                      str(tmp_path / "straight"), deadline_s=240)
    assert straight.ok, straight.log_tail()
    _, expected = _losses(straight)
    out, ckpt = str(tmp_path / "crash"), str(tmp_path / "ckpt_b")
    monkeypatch.setenv("DMT_FX_FAULT", "rank=1,step=5")  # SIGKILL rank 1 at the start of step 5
    crashed = launch_job(Topology(2, 2), _job(out, ckpt), out, deadline_s=240)
    assert not crashed.ok and not crashed.timed_out
    assert open(os.path.join(ckpt, "latest")).read() == "step_00000003"  # steps 0-3 saved; 4 lost in the crash
    monkeypatch.delenv("DMT_FX_FAULT")
    resumed = launch_job(Topology(2, 2), _job(out, ckpt), out, deadline_s=240)  # the very same command
    assert resumed.ok, resumed.log_tail()
    first, losses = _losses(resumed)
    assert first == 4 and losses == expected[4:], (first, losses, expected)


def test_adam_on_cpu_tables_resumes_exactly(tmp_path) -> None:
    """Adam on the CPU runs the tables on TorchRec's DENSE kernel (FBGEMM fuses no CPU Adam):
    its per-shard state must checkpoint sharded like the tables (runtime/dense_tables.py), or
    the resumed run's updates differ (or the load fails)."""
    def job(out: str, ckpt: str, steps: int) -> list[str]:
        args = _job(out, ckpt)
        args[args.index("--steps") + 1], args[args.index("--optimizer") + 1] = str(steps), "adam"
        return args

    straight = launch_job(Topology(2, 2), job(str(tmp_path / "a"), str(tmp_path / "ca"), 4), str(tmp_path / "a"),
                      deadline_s=240)
    assert straight.ok, straight.log_tail()
    out, ckpt = str(tmp_path / "b"), str(tmp_path / "cb")
    first = launch_job(Topology(2, 2), job(out, ckpt, 2), out, deadline_s=240)  # saves after step 1
    assert first.ok, first.log_tail()
    resumed = launch_job(Topology(2, 2), job(out, ckpt, 4), out, deadline_s=240)
    assert resumed.ok, resumed.log_tail()
    start, losses = _losses(resumed)
    assert start == 2 and losses == _losses(straight)[1][2:], (start, losses, _losses(straight))
