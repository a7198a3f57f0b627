"""The one run summarizer: the per-rank results of a variant -> one record.

Used by `dmt-fx run` / `demo` (the results table and summary.json), `dmt-fx bench traffic`
and `dmt-fx bench emulated`. A rank's result (`dmt_fx.jobs.worker`, OUT/rank<r>.json) holds
its losses, its step times and its traffic meter's per-step means over the measured steps.
"""

from __future__ import annotations

import statistics
from typing import Any, Sequence

from dmt_fx.jobs.breakdown import merge_ranks

LOSS_WINDOW = 10  # final_loss: mean of the last steps, one step's loss is noisy


def slowest_step_times(ranks: Sequence[dict[str, Any]], field: str = "step_times_s") -> list[float]:
    """Per step, the slowest rank's time: a step takes as long as its slowest rank."""
    steps = min(len(r.get(field, ())) for r in ranks)
    return [max(r[field][i] for r in ranks) for i in range(steps)]


def timed_step_times(ranks: Sequence[dict[str, Any]], warmup: int,
                     field: str = "step_times_s") -> tuple[list[float], bool]:
    """The slowest rank's step times after `warmup`, without the steps the traffic meter
    watched (`metered_steps`: it slows them down) and the profiled ones (`profiled_steps`);
    those only when no other is left. Returns (times, whether they are metered steps).
    `field="step_cpu_s"`: the same steps' process CPU time (what a step costs without
    waiting for a core, the load-independent half of a noisy wall time)."""
    first = ranks[0].get("first_step", 0)
    metered = set(ranks[0].get("metered_steps", ())) | set(ranks[0].get("profiled_steps", ()))
    times = slowest_step_times(ranks, field)
    after_warmup = [(first + i, t) for i, t in enumerate(times) if i >= warmup]
    unmetered = [t for step, t in after_warmup if step not in metered]
    if unmetered or not after_warmup:
        return unmetered, False
    return [t for _, t in after_warmup], True


def total_cpu_times(ranks: Sequence[dict[str, Any]], warmup: int) -> list[float]:
    """Per timed step (the steps `timed_step_times` keeps), the CPU time of ALL ranks together:
    what the job asks of the machine's cores per step (`dmt_fx.bench.breakdown_plot`'s
    `cpu_busy_share` divides it by cores x step time)."""
    totals = [{**ranks[0], "step_cpu_s": [sum(step) for step in zip(*(r.get("step_cpu_s", ()) for r in ranks))]}]
    return timed_step_times(totals, warmup, "step_cpu_s")[0]


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(q1, median, q3); a single value is all three, none gives zeros."""
    if len(values) > 1:
        q1, _, q3 = statistics.quantiles(values, n=4)
        return q1, statistics.median(values), q3
    return (values[0],) * 3 if values else (0.0, 0.0, 0.0)


def _traffic_means(ranks: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean over ranks of every numeric traffic field (whatever the meter reports)."""
    keys = [k for k, v in ranks[0]["traffic"].items() if isinstance(v, (int, float)) and k != "steps"]
    return {k: statistics.fmean(r["traffic"].get(k, 0.0) for r in ranks) for k in keys}


def _breakdown(ranks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean over ranks of each rank's per-stage medians (`dmt_fx.jobs.breakdown`)."""
    fields = ("breakdown_s", "exposed_comm_s", "comm_thread_s")
    return {f: merge_ranks([r.get(f, {}) for r in ranks]) for f in fields}


def summarize(variant: str, ranks: Sequence[dict[str, Any]], *, warmup: int) -> dict[str, Any]:
    """One record: losses, traffic per rank per step (mean over ranks), step times.

    Step times are the slowest rank's, without the first `warmup` steps and the metered
    ones (`timed_step_times`); the traffic is already averaged over the metered steps by
    each rank's meter."""
    if not ranks:
        raise ValueError(f"no rank results for {variant}")
    losses = ranks[0]["losses"]
    times, metered_times = timed_step_times(ranks, warmup)
    q1, median, q3 = quartiles(times)
    cpu_times, _ = timed_step_times(ranks, warmup, "step_cpu_s")
    queue_waits, _ = timed_step_times(ranks, warmup, "step_runqueue_wait_s")
    traffic = _traffic_means(ranks)
    record: dict[str, Any] = {
        "variant": variant, "topology": ranks[0]["topology"], "ranks": len(ranks), "steps": len(losses),
        "pipelined": bool(ranks[0].get("pipelined", False)),
        "pipelined_modules": ranks[0].get("pipelined_modules", []),
        "warmup_steps": warmup, "measured_steps": ranks[0]["traffic"].get("steps", 0),
        "first_loss": losses[0] if losses else None,
        "final_loss": statistics.fmean(losses[-LOSS_WINDOW:]) if losses else None,
        **traffic,
        "cross_host_bytes": traffic.get("cross_host_id_bytes", 0.0) + traffic.get("cross_host_embedding_bytes", 0.0),
        "dense_allreduce_bytes_estimate": ranks[0].get("dense_allreduce_bytes_estimate", 0.0),
        "step_time_median_s": median, "step_time_iqr_s": q3 - q1, "step_time_q1_s": q1, "step_time_q3_s": q3,
        "timed_steps": len(times), "step_times_s": times, "step_times_metered": metered_times,
        "step_cpu_median_s": quartiles(cpu_times)[1], "step_cpu_s": cpu_times,
        "step_cpu_all_ranks_median_s": quartiles(total_cpu_times(ranks, warmup))[1],
        # the training thread's share (the rest is gloo's threads: sockets, the kernel's network stack)
        "step_main_thread_cpu_median_s": quartiles(timed_step_times(ranks, warmup, "step_main_thread_cpu_s")[0])[1]
        if all("step_main_thread_cpu_s" in r for r in ranks) else None,
        "step_runqueue_wait_median_s": quartiles(queue_waits)[1],
        **_breakdown(ranks), "profiled_steps": ranks[0].get("profiled_steps", []),
        "per_rank": [{"rank": r["rank"], **{k: r["traffic"].get(k, 0.0) for k in traffic}} for r in ranks],
    }
    return record
