"""Distributed jobs behind `dmt-fx run` and `dmt-fx demo`: launch variants, summarise them."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

from dmt_fx.bench.breakdown_plot import plot_breakdown
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.topology import Topology
from dmt_fx.jobs.launch import LaunchResult, launch
from dmt_fx.jobs.summary import summarize
from dmt_fx.runtime.rank_status import refusal_line


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
    warmup: int = 2  # steps left out of the step times and traffic means

    def worker_args(self, variant: str, out_dir: str) -> list[str]:
        return ["--target", self.target, "--topology", str(self.topology), "--variant", variant,
                "--steps", str(self.steps), "--batch-size", str(self.batch_size), "--lr", str(self.lr),
                "--optimizer", self.optimizer, "--warmup", str(self.warmup), "--out", out_dir, *self.extra]


def _clear(out_dir: str) -> None:
    """Leave no result of an earlier run where this one writes its own."""
    for name in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
        if name.startswith(("rank", "progress", "outputs_rank", "pid_rank")):
            os.remove(os.path.join(out_dir, name))


def run_variant(spec: RunSpec, variant: str, *, on_poll: Callable[[], None] | None = None,
                deadline_s: float = 1800) -> LaunchResult:
    out_dir = os.path.join(spec.out, variant)
    _clear(out_dir)
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
    cause = refusal_line(sorted(set(lines)))  # one rank refused its batch: that rank and why, once
    return cause or "\n".join(sorted(set(lines))[:8]) or result.log_tail(15)


def run_together(spec: RunSpec, variants: Sequence[str], *, deadline_s: float = 1800) -> list[dict[str, Any]]:
    """All variants in ONE torchrun launch (the worker's --variants: same process group, one
    after the other, results in OUT/<variant>/): a launch's start-up paid once."""
    out_dir = spec.out
    for variant in variants:
        _clear(os.path.join(out_dir, variant))
    args = [*spec.worker_args(variants[0], out_dir), "--variants", ",".join(variants)]
    result = launch(spec.topology, args, out_dir, deadline_s=deadline_s)
    if not result.ok:
        reason = "timed out" if result.timed_out else f"exit codes {result.returncodes}"
        raise DMTError(f"the run of {', '.join(variants)} on {spec.topology} failed ({reason}); logs in "
                       f"{out_dir}/agent*.log:\n{_failure_lines(result)}", "every rank to finish its steps",
                       ["read the agent logs named above", "run with fewer steps or a smaller batch to isolate it"])
    rows = []
    for variant in variants:
        ranks = LaunchResult(result.returncodes, result.seconds, os.path.join(out_dir, variant), False).ranks()
        rows.append({**summarize(variant, ranks, warmup=spec.warmup), "wall_s": result.seconds,
                     "target": spec.target, "batch_size": spec.batch_size})
    _plot(spec, rows)
    return rows


def _plot(spec: RunSpec, rows: list[dict[str, Any]]) -> None:
    os.makedirs(spec.out, exist_ok=True)
    plot_breakdown(rows, os.path.join(spec.out, "breakdown.png"),
                   f"{spec.target} on {spec.topology}: where a step goes (profiled steps, mean over ranks)")


def run_many(spec: RunSpec, variants: Sequence[str], progress=None) -> list[dict[str, Any]]:
    """Run variants one after the other (side by side in one invocation); a row each."""
    rows = []
    for variant in variants:
        poll = progress(variant, os.path.join(spec.out, variant, "progress")) if progress else None
        result = run_variant(spec, variant, on_poll=poll)
        rows.append({**summarize(variant, result.ranks(), warmup=spec.warmup), "wall_s": result.seconds})
    _plot(spec, rows)
    return rows
