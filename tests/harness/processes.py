"""The `distributed` marker, enforced: a test that starts a process must carry it.

While a test runs (setup, call and teardown, fixtures included), `subprocess.Popen` and
`multiprocessing`'s `Process.start` (torchrun agents, `dmt-fx` subprocesses,
torch.multiprocessing ranks) check the running test's markers; a test without
`@pytest.mark.distributed` fails naming the process it started. So `pytest -m "not
distributed"` is a single-process run, and stays one. Processes started outside a test
(collection, imports) are not checked.
"""

from __future__ import annotations

import multiprocessing.process
import subprocess
from typing import Any

import pytest

MARKER = "distributed"
_running: list[pytest.Item] = []  # the test being run (one at a time: no xdist here)
_unmarked: dict[str, str] = {}  # nodeid -> the first process an unmarked test started


def _check(what: str) -> None:
    if not _running or _running[-1].get_closest_marker(MARKER) is not None:
        return
    item = _running[-1]
    _unmarked.setdefault(item.nodeid, what)
    pytest.fail(f"{item.nodeid} starts a process ({what}) without @pytest.mark.{MARKER}: mark the test "
                f"(or its module: pytestmark = pytest.mark.{MARKER}) so `-m 'not {MARKER}'` stays single-process",
                pytrace=False)


def install() -> None:
    """Wrap the two ways tests start processes (once per session)."""
    popen_init = subprocess.Popen.__init__
    process_start = multiprocessing.process.BaseProcess.start

    def checked_popen_init(self: subprocess.Popen, args: Any, *rest: Any, **kwargs: Any) -> None:
        _check(f"subprocess {str(args)[:120]}")
        popen_init(self, args, *rest, **kwargs)

    def checked_start(self: multiprocessing.process.BaseProcess) -> None:
        _check(f"multiprocessing {self.name}")
        process_start(self)

    subprocess.Popen.__init__ = checked_popen_init  # type: ignore[method-assign]
    multiprocessing.process.BaseProcess.start = checked_start  # type: ignore[method-assign]


def enter(item: pytest.Item) -> None:
    _running.append(item)


def leave() -> None:
    _running.pop()


def unmarked(nodeid: str) -> str | None:
    """The process an unmarked test started (a fail inside a library's thread may be lost)."""
    return _unmarked.get(nodeid)


def forget(nodeid: str) -> None:
    """Drop the record of `nodeid`'s unmarked process (the enforcement's own test)."""
    _unmarked.pop(nodeid, None)
