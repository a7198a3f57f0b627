"""Distributed jobs behind `dmt-fx run` and `dmt-fx demo`: launch variants, summarise them."""

from __future__ import annotations

import dataclasses
import os
import statistics
from typing import Any, Callable, Sequence

from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.topology import Topology
from dmt_fx.jobs.launch import LaunchResult, launch


@dataclasses.dataclass(frozen=True)
class RunSpec:
    target: str
    topology: Topology
    steps: int
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "adagrad"
    out: str = "results/run"
    extra: tuple[str, ...] = ()

    def worker_args(self, variant: str, out_dir: str) -> list[str]:
        return ["--target", self.target, "--topology", str(self.topology), "--variant", variant,
                "--steps", str(self.steps), "--batch-size", str(self.batch_size), "--lr", str(self.lr),
                "--optimizer", self.optimizer,
                "--out", out_dir, *self.extra]


def run_variant(spec: RunSpec, variant: str, *, on_poll: Callable[[], None] | None = None,
                deadline_s: float = 1800) -> LaunchResult:
    out_dir = os.path.join(spec.out, variant)
    for name in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
        if name.startswith(("rank", "progress", "outputs_rank", "pid_rank")):
            os.remove(os.path.join(out_dir, name))
    result = launch(spec.topology, spec.worker_args(variant, out_dir), out_dir, deadline_s=deadline_s,
                    on_poll=on_poll)
    if not result.ok:
        reason = "timed out" if result.timed_out else f"exit codes {result.returncodes}"
        if result.unresponsive_ranks:
            reason += f"; rank(s) {result.unresponsive_ranks} stopped answering"
        raise DMTError(f"the {variant} run on {spec.topology} failed ({reason}); logs in {out_dir}/agent*.log:\n"
                       f"{_failure_lines(result)}",
                       "every rank to finish its steps",
                       ["read the agent logs named above", "run with fewer steps or a smaller batch to isolate it"])
    return result


def _failure_lines(result: LaunchResult) -> str:
    lines = [l for l in result.log_tail(200).splitlines() if "dmt-fx worker" in l]
    return "\n".join(sorted(set(lines))[:8]) or result.log_tail(15)


def summarize(variant: str, result: LaunchResult, warmup: int = 2) -> dict[str, Any]:
    """One row: losses, traffic per rank per step (mean over ranks), step time over ranks."""
    ranks = result.ranks()
    losses = ranks[0]["losses"]
    times = [max(r["step_times_s"][i] for r in ranks) for i in range(len(losses))][warmup:] or [0.0]
    traffic = [r["traffic"] for r in ranks]

    def mean(key: str) -> float:
        return statistics.fmean(t.get(key, 0) for t in traffic)

    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"variant": variant, "topology": ranks[0]["topology"], "steps": len(losses),
            "first_loss": losses[0], "final_loss": statistics.fmean(losses[-10:]),
            "cross_host_id_bytes": mean("cross_host_id_bytes"),
            "cross_host_embedding_bytes": mean("cross_host_embedding_bytes"),
            "cross_host_messages": mean("cross_host_messages"),
            "intra_host_bytes": mean("intra_host_bytes"),
            "dense_allreduce_bytes_estimate": ranks[0].get("dense_allreduce_bytes_estimate", 0),
            "step_time_median_s": statistics.median(times), "step_time_iqr_s": q[2] - q[0],
            "wall_s": result.seconds}


def run_many(spec: RunSpec, variants: Sequence[str], progress=None) -> list[dict[str, Any]]:
    """Run variants one after the other (side by side in one invocation); a row each."""
    rows = []
    for variant in variants:
        poll = progress(variant, os.path.join(spec.out, variant, "progress")) if progress else None
        rows.append(summarize(variant, run_variant(spec, variant, on_poll=poll)))
    return rows
