"""The one launcher for multi-process worlds in tests.

- torchrun jobs of the dmt-fx worker (`python -m dmt_fx.jobs.worker`, one torchrun agent per
  emulated host, through `dmt_fx.jobs.launch.launch`): `launch_job` for one job's flags,
  `launch_cases` for many cases run one after the other in one launch (the worker's
  `--cases FILE`: one launch per topology keeps CI cheap), `run_cases` for `cases.Case`s.
- torch.multiprocessing worlds of a test's own function: `run_world`.
Every test that calls one of these carries the `distributed` marker (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest
import torch.multiprocessing as mp

from dmt_fx import Topology
from dmt_fx.jobs.launch import LaunchResult, launch
from tests.harness.cases import Case
from tests.harness.training import LR


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_world(fn: Callable, out_dir: Path, *, nprocs: int, timeout_s: float) -> None:
    """Spawn `nprocs` ranks of `fn(rank, port, out_dir)` and wait; fail on error or timeout."""
    ctx = mp.start_processes(fn, args=(free_port(), str(out_dir)), nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"distributed world did not finish in {timeout_s} s")


def launch_job(topology: str | Topology, args: Sequence[str], out: str, *, deadline_s: float = 600,
               grace_s: float = 60) -> LaunchResult:
    """One torchrun launch of the worker with `args` on the emulated hosts of `topology`."""
    world = topology if isinstance(topology, Topology) else Topology.parse(topology)
    return launch(world, list(args), out, deadline_s=deadline_s, grace_s=grace_s)


def launch_cases(specs: list[dict[str, Any]], cases_file: str, out: str, topology: str, *, target: str, steps: int,
                 batch_size: int | None = None, record: bool = True, timeout_s: int = 60, deadline_s: float = 600,
                 grace_s: float = 60) -> LaunchResult:
    """One launch running `specs` ({"name", "args": more worker flags}) one after the other in one
    process group; each case writes under OUT/<name>/. `record`: every step's outputs, no profiler."""
    with open(cases_file, "w") as handle:
        json.dump(specs, handle)
    args = ["--target", target, "--topology", topology, "--steps", str(steps),
            *(["--batch-size", str(batch_size)] if batch_size is not None else []), "--lr", str(LR),
            "--out", out, "--timeout-s", str(timeout_s), *(["--record-outputs", "--profile-steps", "0"] if record else []),
            "--cases", cases_file]
    return launch_job(topology, args, out, deadline_s=deadline_s, grace_s=grace_s)


def run_cases(tmp_path, topology: str, cases: list[Case], *, steps: int, timeout_s: int = 60,
              deadline_s: float = 600) -> LaunchResult:
    """`cases` in one launch, each with its own batch size, plan and DCP checkpoint; check each
    with `cases.check_case` (or `check_modes_case`)."""
    out = str(tmp_path / f"cases-{topology}")
    os.makedirs(out, exist_ok=True)
    spec = [{"name": c.name, "args": ["--target", c.target, "--batch-size", str(c.batch_size),
                                      "--save-checkpoint", os.path.join(out, c.name, "ckpt"),
                                      *(["--plan", json.dumps(c.plan)] if c.plan else []), *c.args]}
            for c in cases]
    return launch_cases(spec, os.path.join(out, "cases.json"), out, topology, target=cases[0].target, steps=steps,
                        timeout_s=timeout_s, deadline_s=deadline_s, grace_s=30)
