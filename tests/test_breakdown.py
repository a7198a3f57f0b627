"""The step breakdown (issue 13 item 1, collector side): real torch.profiler events of nested ranges.

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

SLEEP = 0.03
TOL = 0.015  # a sleep overshoots on a loaded machine; never by a whole SLEEP


def _profiled_step():
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function(stage_range(Stage.DENSE_FORWARD)):
            time.sleep(SLEEP)  # dense forward's own time
            with record_function(stage_range(Stage.PEER_INPUT)):
                time.sleep(2 * SLEEP)
                with record_function("## all2all_data:kjt lengths ##"):  # TorchRec inside a runtime stage
                    time.sleep(SLEEP)
            with record_function("## all2all_pooled ##"):  # TorchRec under the worker's range: flat output dist
                time.sleep(SLEEP)
        with record_function(stage_range(Stage.BACKWARD)):
            torch.ones(3).sum()
            time.sleep(SLEEP)
            with record_function("autograd::engine::evaluate_function: All2All_Pooled_ReqBackward"):
                time.sleep(SLEEP)  # the wait for the gradients' all-to-all: not the forward output dist
    return list(prof.events())


def test_exclusive_seconds_per_key() -> None:
    stages, _ = breakdown.step_breakdown(_profiled_step())
    assert abs(stages[Stage.DENSE_FORWARD.value] - SLEEP) < TOL, stages
    assert abs(stages[Stage.PEER_INPUT.value] - 3 * SLEEP) < TOL, stages  # the TorchRec range stays inside
    assert abs(stages["output_dist"] - SLEEP) < TOL, stages
    assert "input_dist" not in stages, stages
    assert abs(stages[Stage.BACKWARD.value] - SLEEP) < TOL, stages
    assert abs(stages["all_to_all_backward"] - SLEEP) < TOL, stages
    total = sum(stages.values())
    assert abs(total - 7 * SLEEP) < 2 * TOL, total  # the keys add up to the step


def test_exposed_comm_per_tier_and_medians() -> None:
    steps = [breakdown.step_breakdown(_profiled_step())[0] for _ in range(3)]
    median = breakdown.medians(steps)
    exposed = breakdown.exposed_comm(median)
    assert abs(exposed["cross_host"] - 3 * SLEEP) < TOL, exposed
    assert exposed["intra_host"] == 0.0
    assert abs(exposed["mixed"] - 2 * SLEEP) < TOL, exposed
    assert breakdown.merge_ranks([{"a": 1.0}, {"a": 3.0, "b": 2.0}]) == {"a": 2.0, "b": 1.0}
