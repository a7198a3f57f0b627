"""The end of a job: the process groups kept until exit, and the wait for idle gloo workers.

A gloo worker that drops its last collective's tensors after the interpreter began to
finalize is ended by Python with `pthread_exit`, and the process aborts ("terminate called
without an active exception"). The `atexit` hook that `keep_until_exit` registers waits
for the workers to be idle first (runtime/shutdown.py). The exit soak (`-m slow`,
tests/test_exit_soak.py) is the end-to-end check; these pin the mechanism.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from dmt_fx.runtime import shutdown

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _named_thread(name: bytes, busy: bool) -> tuple[threading.Thread, threading.Event, list[int]]:
    """A thread whose OS name is `name`, spinning (busy) or asleep on an event until stopped."""
    stop, named, tid = threading.Event(), threading.Event(), []

    def body() -> None:
        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME
        tid.append(threading.get_native_id())
        named.set()
        while not stop.is_set():
            if not busy:
                stop.wait()
    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    named.wait()
    return thread, stop, tid


def test_a_busy_worker_is_waited_for_and_an_idle_one_is_not() -> None:
    """(Other tests' gloo groups may have left idle workers in this process: they pass as idle.)"""
    thread, stop, tid = _named_thread(shutdown._GLOO_WORKER.encode(), busy=True)
    try:
        assert tid[0] in shutdown._worker_states()
        start = time.monotonic()
        assert shutdown.wait_for_idle_workers(timeout_s=0.3) is False
        assert time.monotonic() - start >= 0.3
    finally:
        stop.set()
        thread.join()
    thread, stop, _ = _named_thread(shutdown._GLOO_WORKER.encode(), busy=False)
    try:
        assert shutdown.wait_for_idle_workers(timeout_s=5.0) is True
    finally:
        stop.set()
        thread.join()


@pytest.mark.distributed
def test_keeping_the_groups_registers_the_exit_wait_once() -> None:
    """In a gloo world of one: the group's two workers are found, the wait returns at once
    after a collective, and the exit hook is registered once however often groups are kept."""
    code = textwrap.dedent("""
        import atexit, time, torch, torch.distributed as dist
        from dmt_fx.runtime import shutdown
        dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
        t = torch.ones(1000)
        dist.all_reduce(t)
        before = atexit._ncallbacks()
        shutdown.keep_until_exit()
        shutdown.keep_until_exit([dist.new_group([0])])
        start = time.monotonic()
        idle = shutdown.wait_for_idle_workers()
        print(len(shutdown._worker_states()), atexit._ncallbacks() - before, idle, time.monotonic() - start < 2)
        dist.destroy_process_group()
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    workers, hooks, idle, quick = run.stdout.split()
    assert int(workers) >= 2 and int(workers) % 2 == 0  # two worker threads per gloo group
    assert (hooks, idle, quick) == ("1", "True", "True")
