"""The step breakdown: real torch.profiler events of nested ranges.

Each range sleeps a known time; the collector must give every key its exclusive time (the
nested ranges taken out of their parent), leave TorchRec names inside a runtime stage to
that stage, classify them under the worker's own ranges, and derive the exposed
communication per tier from the stages.
"""

from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from dmt_fx.ir.stages import Stage, stage_range
from dmt_fx.jobs import breakdown

SLEEP = 0.02
TOL = 0.004  # range edges against perf_counter around the same sleep: well under a sleep


def _nap(took: dict, key: str, seconds: float = SLEEP) -> None:
    """Sleep and add the time really slept to `took[key]` (a loaded machine oversleeps)."""
    start = time.perf_counter()
    time.sleep(seconds)
    took[key] = took.get(key, 0.0) + time.perf_counter() - start


def _profiled_step():
    took: dict[str, float] = {}
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function(stage_range(Stage.DENSE_FORWARD)):
            _nap(took, Stage.DENSE_FORWARD.value)  # dense forward's own time
            with record_function(stage_range(Stage.PEER_INPUT)):
                _nap(took, Stage.PEER_INPUT.value, 2 * SLEEP)
                with record_function("## all2all_data:kjt lengths ##"):  # TorchRec inside a runtime stage
                    _nap(took, Stage.PEER_INPUT.value)
            with record_function("## all2all_pooled ##"):  # TorchRec under the worker's range: flat output dist
                _nap(took, "output_dist")
        with record_function(stage_range(Stage.BACKWARD)):
            torch.ones(3).sum()
            _nap(took, Stage.BACKWARD.value)
            with record_function("autograd::engine::evaluate_function: All2All_Pooled_ReqBackward"):
                _nap(took, "all_to_all_backward")  # the wait for the gradients' all-to-all, not the output dist
    return list(prof.events()), took


def test_exclusive_seconds_per_key() -> None:
    events, took = _profiled_step()
    stages, _ = breakdown.step_breakdown(events)
    assert set(stages) == set(took), stages  # input_dist: inside a runtime stage, not classified
    for key, seconds in took.items():
        assert abs(stages[key] - seconds) < TOL, (key, stages[key], seconds)
    assert abs(sum(stages.values()) - sum(took.values())) < 2 * TOL  # the keys add up to the step


def test_exposed_comm_per_tier_and_medians() -> None:
    steps = [_profiled_step() for _ in range(3)]
    median = breakdown.medians([breakdown.step_breakdown(events)[0] for events, _ in steps])
    exposed = breakdown.exposed_comm(median)
    took = breakdown.medians([t for _, t in steps])
    assert abs(exposed["cross_host"] - took[Stage.PEER_INPUT.value]) < TOL, exposed
    assert exposed["intra_host"] == 0.0
    assert abs(exposed["mixed"] - took["output_dist"] - took["all_to_all_backward"]) < 2 * TOL, exposed
    assert breakdown.merge_ranks([{"a": 1.0}, {"a": 3.0, "b": 2.0}]) == {"a": 2.0, "b": 1.0}


def test_summary_leaves_profiled_steps_out_and_averages_the_ranks() -> None:
    from dmt_fx.jobs.summary import summarize

    def rank(r: int, lookup: float) -> dict:
        return {"rank": r, "topology": "2x1", "losses": [0.7, 0.6, 0.5, 0.4], "step_times_s": [9.0, 0.2, 5.0, 0.3],
                "traffic": {"steps": 0}, "metered_steps": [], "profiled_steps": [2],
                "breakdown_s": {"lookup": lookup}, "exposed_comm_s": {"cross_host": lookup}, "comm_thread_s": {}}

    record = summarize("v", [rank(0, 0.01), rank(1, 0.03)], warmup=1)
    assert record["step_times_s"] == [0.2, 0.3]  # warm-up step 0 and profiled step 2 left out
    assert record["breakdown_s"] == {"lookup": 0.02} and record["exposed_comm_s"] == {"cross_host": 0.02}
    assert record["profiled_steps"] == [2]



def test_a_profiler_that_fails_to_stop_drops_only_its_step(capsys):
    """kineto once raised std::bad_alloc while stopping (a suite run): the job goes on."""
    from dmt_fx.jobs.breakdown import _stop

    class Failing:
        def __exit__(self, *args):
            raise MemoryError("std::bad_alloc")

    kept = object()
    profiles = [kept, Failing()]
    _stop(profiles, 7)
    assert profiles == [kept]
    assert "profiler failed after step 7" in capsys.readouterr().err
