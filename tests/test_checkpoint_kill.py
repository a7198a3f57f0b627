"""Checkpoints survive a kill: SIGKILL of one rank, or of all, at a random point of a
torch.distributed.checkpoint save (`DMT_FX_SAVE_FAULT`, dmt_fx/jobs/faults.py).

Each trial: a 2x2 job checkpointing every step is killed inside the save of step S; the
very same command then resumes. It must resume from the step `DIR/latest` names (the last
save that finished on every rank), never load the interrupted one (its directory is named
in one warning line, then skipped), and from there train exactly as an uninterrupted run
(losses within 1e-6). One trial in the default suite, 20 under `-m slow`.
"""

from __future__ import annotations

import os
import random

import pytest

from dmt_fx import DMTError, Topology
from dmt_fx.jobs.faults import ENV
from dmt_fx.runtime import resume
from tests.harness.launch import launch_job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 5
WARNING = "dmt-fx: skipping partial checkpoint"


def _job(out: str, ckpt: str) -> list[str]:
    return ["--target", f"{ROOT}/examples/torchrec_dlrm.py:build", "--topology", "2x2", "--steps", str(STEPS),
            "--batch-size", "4", "--optimizer", "adagrad", "--lr", "0.05", "--out", out, "--timeout-s", "60",
            "--checkpoint-dir", ckpt, "--checkpoint-every", "1", "--traffic-steps", "0", "--profile-steps", "0"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> list[float]:
    """The uninterrupted run's losses, every step."""
    out = str(tmp_path_factory.mktemp("straight"))
    result = launch_job(Topology(2, 2), _job(out, os.path.join(out, "ckpt")), out, deadline_s=300)
    assert result.ok, result.log_tail()
    return result.ranks()[0]["losses"]


def kill_trial(base: str, straight: list[float], monkeypatch, *, rank: str, step: int, delay_ms: float) -> dict:
    """Kill `rank` (or `all`) `delay_ms` into the save of step `step`, resume, check; the outcome."""
    out, ckpt = os.path.join(base, "run"), os.path.join(base, "ckpt")
    monkeypatch.setenv(ENV, f"rank={rank},step={step},delay_ms={delay_ms}")
    crashed = launch_job(Topology(2, 2), _job(out, ckpt), out, deadline_s=300, grace_s=30)
    monkeypatch.delenv(ENV)
    assert not crashed.ok and not crashed.timed_out, crashed.log_tail()
    where = open(os.path.join(ckpt, "faults.log")).read().strip()
    complete = resume.latest(ckpt)
    partial = resume.partial_saves(ckpt, complete)
    resumed = launch_job(Topology(2, 2), _job(out, ckpt), out, deadline_s=300)  # the very same command
    assert resumed.ok, resumed.log_tail()
    first, losses = resumed.ranks()[0]["first_step"], resumed.ranks()[0]["losses"]
    expected_first = resume._step_of(complete) + 1 if complete else 0
    assert first == expected_first, (first, complete, where)
    assert first <= step + 1 and len(losses) == STEPS - first
    assert max(abs(a - b) for a, b in zip(losses, straight[first:])) <= 1e-6, (losses, straight, where)
    warnings = [line for line in resumed.log_tail(400).splitlines() if WARNING in line]
    assert len(warnings) == (1 if partial else 0), (warnings, partial)  # one line, rank 0 only
    return {"where": where, "latest": complete and os.path.basename(complete), "partial": len(partial),
            "first": first}


@pytest.mark.distributed
def test_kill_one_rank_during_a_save(tmp_path, straight, monkeypatch) -> None:
    outcome = kill_trial(str(tmp_path), straight, monkeypatch, rank="1", step=2, delay_ms=20)
    print(outcome)
    assert outcome["first"] in (2, 3)


@pytest.mark.distributed
@pytest.mark.slow
def test_kill_trials(tmp_path, straight, monkeypatch) -> None:
    """20 trials: the killed ranks, the step and the point in the save drawn at random (seeded).
    The point is drawn inside the save: uniform up to 0.9 x the shortest save seen so far (a
    kill that fires at the end of a save logs how long the save took), 100 ms before any."""
    draw, outcomes, shortest = random.Random(25), [], 100.0 / 0.9
    for number in range(20):
        rank = "all" if number % 2 else str(draw.randrange(4))
        step, delay = draw.randrange(1, STEPS - 1), round(draw.uniform(0, 0.9 * shortest), 1)
        outcome = kill_trial(str(tmp_path / f"trial{number}"), straight, monkeypatch, rank=rank, step=step,
                             delay_ms=delay)
        outcomes.append(outcome)
        print(f"trial {number}: rank {rank}, save of step {step}, {delay} ms: {outcome}")
        if "at the end of the save" in outcome["where"]:
            shortest = min(shortest, _elapsed_ms(outcome["where"]))
    mid_save = sum("during the save" in o["where"] for o in outcomes)
    partial = sum(bool(o["partial"]) for o in outcomes)
    print(f"20 trials: {mid_save} kills during a save, {partial} left a partial checkpoint (skipped), "
          "every resume exact")
    assert partial >= 5 and mid_save >= 15  # the draws reach inside the save, not only its end


def _elapsed_ms(where: str) -> float:
    """The shortest save among faults.log lines like 'rank 1 killed at the end of the save of
    step 2, 131.5 ms in' (one line per killed rank)."""
    return min(float(line.rsplit(",", 1)[1].split()[0]) for line in where.splitlines() if "at the end" in line)


def test_the_marker_decides_what_is_complete(tmp_path) -> None:
    """Without processes: only the step the marker names is complete, newer ones are partial,
    and a marker naming a directory without DCP metadata is a DMTError, not a DCP traceback."""
    done, unfinished = tmp_path / "step_00000001", tmp_path / "step_00000002"
    done.mkdir()
    (done / ".metadata").write_text("")
    unfinished.mkdir()
    assert resume.latest(str(tmp_path)) is None  # no marker: nothing completed, both partial
    assert resume.partial_saves(str(tmp_path), None) == [str(done), str(unfinished)]
    (tmp_path / "latest").write_text("step_00000001")
    assert resume.latest(str(tmp_path)) == str(done)
    assert resume.partial_saves(str(tmp_path), str(done)) == [str(unfinished)]
    (tmp_path / "latest").write_text("step_00000002")
    with pytest.raises(DMTError, match="no DCP .metadata"):
        resume.latest(str(tmp_path))
