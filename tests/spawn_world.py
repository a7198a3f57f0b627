"""A small harness for tests that spawn a real multi-process world (torch.multiprocessing)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Callable

import pytest
import torch.multiprocessing as mp


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
