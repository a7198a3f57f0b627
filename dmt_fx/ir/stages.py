"""The stages of one training step, as `torch.profiler` ranges.

The runtime opens a `record_function(stage_range(Stage.X))` around each stage; the
benchmark's collector reads these ranges back from the profiler and reports the median
seconds per stage as `breakdown_s`. One owner for the names, so the runtime that emits a
range and the collector that reads it cannot drift apart.
"""

from __future__ import annotations

import enum

PREFIX = "dmt_fx::"


class Stage(str, enum.Enum):
    PEER_INPUT = "peer_input_exchange"
    INTRA_INPUT = "intra_host_input_dist"
    LOOKUP = "lookup"
    INTRA_OUTPUT = "intra_host_output_dist"
    TOWER_MODULE = "tower_module"
    PEER_OUTPUT = "peer_output_exchange"
    MERGE = "merge"
    DENSE_FORWARD = "dense_forward"
    BACKWARD = "backward"
    GRAD_ALLREDUCE = "grad_allreduce"
    OPTIMIZER = "optimizer"


def stage_range(stage: Stage) -> str:
    """The profiler range name of a stage."""
    return PREFIX + stage.value


def stage_of(range_name: str) -> Stage | None:
    """The stage a profiler range names, or None for ranges that are not ours."""
    if not range_name.startswith(PREFIX):
        return None
    try:
        return Stage(range_name[len(PREFIX):])
    except ValueError:
        return None
