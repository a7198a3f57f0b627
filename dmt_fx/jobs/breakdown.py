"""Where a step's time goes: the collector side of the step breakdown.

The worker runs a few steps under `torch.profiler` and hands each step's events here.
Every event whose name is a stage range (`dmt_fx.ir.stages`: the runtime opens the DMT
stages, the worker opens dense forward, backward and optimizer) is a *stage*; a few
TorchRec and FBGEMM names are classified too, so the flat baselines, which have no DMT
stages, show theirs: `input_dist` (TorchRec's KJT all-to-all ranges), `output_dist` (its
pooled all-to-all ranges; row-wise plans: its reduce-scatter), `all_to_all_backward` (the
backward of TorchRec's pooled all-to-alls, issue and wait, flat or the DMT exchanges alike), `lookup` (FBGEMM's table-batched lookup op), `grad_allreduce`
(DDP's all-reduce calls and bucket copies), `replica_sync` (TorchRec 2D's weight and
optimizer-state sync). A TorchRec or FBGEMM event inside a runtime stage belongs to that
stage (the tower lookup of DMT is TorchRec too); it is classified only under the worker's
own ranges.

Accounting is exclusive on the training thread: a classified event's time counts for its
key and is taken from its nearest classified ancestor, so the keys add up to the time of
the worker's ranges, i.e. the step (`dense_forward` is what the forward spent outside every
other key). Blocking waits that no range encloses stay in the enclosing key. Communication
is *exposed* when the training thread waits in it; per tier (`exposed_comm_s`) it is the sum
of the stages that are exchanges of that tier: the peer exchanges cross hosts, the
intra-host distributions do not, and the flat plans' world-wide all-to-alls and the
all-reduces mix both (`mixed`). What gloo's own threads spend in each collective, overlapped
or not, is `comm_thread_s` (by gloo op name).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
from collections import defaultdict
from typing import Any, Iterable, Sequence

import torch

from dmt_fx.ir.stages import Stage, stage_of

WORKER_STAGES = (Stage.DENSE_FORWARD, Stage.BACKWARD, Stage.OPTIMIZER)
# (substring of a TorchRec / FBGEMM / DDP event name, key), first match wins
FOREIGN = (
    ("all2all_data", "input_dist"),
    ("All2All_Pooled_bwd", "all_to_all_backward"),  # the gradients' all-to-all, issued in backward
    ("All2All_Pooled_ReqBackward", "all_to_all_backward"),  # autograd node: waits for it
    ("All2All_Pooled_WaitBackward", "all_to_all_backward"),
    ("All2All_Pooled", "output_dist"),
    ("all2all_pooled", "output_dist"),
    ("reduce_scatter", "output_dist"),
    ("2d_weight_sync", "replica_sync"),
    ("2d_optimizer_sync", "replica_sync"),
    ("fbgemm::split_embedding_codegen_lookup", Stage.LOOKUP.value),
    ("c10d::allreduce", Stage.GRAD_ALLREDUCE.value),
    ("ddp.reducer", Stage.GRAD_ALLREDUCE.value),
)
TIERS = {
    "cross_host": (Stage.PEER_INPUT.value, Stage.PEER_OUTPUT.value),
    "intra_host": (Stage.INTRA_INPUT.value, Stage.INTRA_OUTPUT.value),
    "mixed": ("input_dist", "output_dist", "all_to_all_backward", Stage.GRAD_ALLREDUCE.value, "replica_sync"),
}
COMM_THREAD_PREFIX = "gloo:"

__all__ = ["COMM_THREAD_PREFIX", "TIERS", "classify", "exposed_comm", "merge_ranks", "medians", "step_breakdown"]


def _key(name: str, under_runtime_stage: bool) -> str | None:
    stage = stage_of(name)
    if stage is not None:
        return stage.value
    if under_runtime_stage:
        return None
    return next((key for part, key in FOREIGN if part in name), None)


def classify(event: Any) -> str | None:
    """The breakdown key of a profiler event, or None (then its time stays with its ancestor)."""
    return _key(event.name, _runtime_ancestor(event))


def _runtime_ancestor(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        stage = stage_of(parent.name)
        if stage is not None and stage not in WORKER_STAGES:
            return True
        parent = parent.cpu_parent
    return False


def _seconds(event: Any) -> float:
    return event.time_range.elapsed_us() / 1e6


def step_breakdown(events: Iterable[Any]) -> tuple[dict[str, float], dict[str, float]]:
    """One profiled step: ({key: exclusive seconds}, {gloo op: seconds on gloo's threads})."""
    keys = {id(e): classify(e) for e in events}
    totals: dict[str, float] = defaultdict(float)
    comm: dict[str, float] = defaultdict(float)
    for event in events:
        if event.name.startswith(COMM_THREAD_PREFIX):
            comm[event.name] += _seconds(event)
        key = keys[id(event)]
        if key is None:
            continue
        totals[key] += _seconds(event)
        ancestor = event.cpu_parent
        while ancestor is not None and keys.get(id(ancestor)) is None:
            ancestor = ancestor.cpu_parent
        if ancestor is not None:
            totals[keys[id(ancestor)]] -= _seconds(event)
    return dict(totals), dict(comm)


def medians(per_step: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per key, the median over steps (a key missing from a step counts 0 there)."""
    names = sorted({k for step in per_step for k in step})
    return {k: statistics.median(step.get(k, 0.0) for step in per_step) for k in names} if per_step else {}


def exposed_comm(breakdown: dict[str, float]) -> dict[str, float]:
    """Seconds the training thread spent in the exchanges of each tier (see module doc)."""
    return {tier: sum(breakdown.get(k, 0.0) for k in keys) for tier, keys in TIERS.items()}


def merge_ranks(per_rank: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean over ranks of each key (ranks of one host do the same work; hosts may differ)."""
    names = sorted({k for rank in per_rank for k in rank})
    return {k: statistics.fmean(rank.get(k, 0.0) for rank in per_rank) for k in names} if per_rank else {}


@contextlib.contextmanager
def profiled(step: int, steps: range, pipelined: bool, profiles: list) -> Any:
    """A profiler per profiled step; pipelined: ONE session over the last steps, so that it
    stops when the pipeline is drained. A pipeline has the next batch's collectives in flight
    between steps, and a profiler stopped under an in-flight gloo collective crashed a rank
    here (SIGSEGV at the end of a profiled step, once in three bench runs)."""
    if step not in steps:
        yield
        return
    if not pipelined or step == steps.start:
        profiles.append(torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]))
        profiles[-1].__enter__()
    try:
        yield
    finally:
        if not pipelined or step == steps.stop - 1:
            _stop(profiles, step)


def _stop(profiles: list, step: int) -> None:
    """Stop the last profiler; if the profiler itself fails (kineto raised std::bad_alloc once
    in a suite run), drop that step's breakdown with one line: the step already ran."""
    try:
        profiles[-1].__exit__(None, None, None)
    except (MemoryError, RuntimeError) as err:
        profiles.pop()
        print(f"dmt-fx worker: profiler failed after step {step} ({err!r}); its breakdown is left out", file=sys.stderr)
