"""Failure injection during a checkpoint save, for the kill trials (docs/reliability.md).

`DMT_FX_SAVE_FAULT="rank=R,step=S,delay_ms=D"` (R a rank or `all`): the chosen ranks
SIGKILL themselves D ms into the periodic save of finished step S, wherever the save is
then (DCP's planning, its file writes, the barriers, the marker), or at its end if it is
done sooner. Before dying a rank appends one line to `DIR/faults.log` saying how far the
save had come. An environment variable, so a test reruns the very same command without it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Iterator

ENV = "DMT_FX_SAVE_FAULT"


def _spec() -> dict[str, str]:
    return dict(part.split("=", 1) for part in os.environ.get(ENV, "").split(",") if "=" in part)


@contextlib.contextmanager
def save_fault(directory: str, rank: int, step: int) -> Iterator[None]:
    """Around the save of step `step`: arm the kill the environment asks for, if any."""
    spec = _spec()
    chosen = spec.get("rank") in ("all", str(rank))
    if not spec or not chosen or int(spec.get("step", -1)) != step:
        yield
        return
    start, fired = time.monotonic(), threading.Event()

    def kill(where: str) -> None:
        if fired.is_set():
            return
        fired.set()
        elapsed = (time.monotonic() - start) * 1e3
        with open(os.path.join(directory, "faults.log"), "a") as handle:
            handle.write(f"rank {rank} killed {where} of step {step}, {elapsed:.1f} ms in\n")
        os.kill(os.getpid(), signal.SIGKILL)

    timer = threading.Timer(float(spec.get("delay_ms", 0)) / 1e3, kill, args=("during the save",))
    timer.daemon = True
    timer.start()
    yield
    kill("at the end of the save")
