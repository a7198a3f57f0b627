"""The `distributed` marker is enforced (tests/harness/processes.py): a test without it that
starts a process fails before the process starts, naming it."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys

import pytest

from tests.harness import processes


def test_an_unmarked_test_cannot_start_a_subprocess(request: pytest.FixtureRequest) -> None:
    with pytest.raises(pytest.fail.Exception, match="starts a process .subprocess.* without @pytest.mark.distributed"):
        subprocess.Popen([sys.executable, "-c", "pass"])
    processes.forget(request.node.nodeid)


def test_an_unmarked_test_cannot_start_a_multiprocessing_process(request: pytest.FixtureRequest) -> None:
    process = multiprocessing.get_context("spawn").Process(target=print)
    with pytest.raises(pytest.fail.Exception, match="starts a process .multiprocessing.* without @pytest.mark"):
        process.start()
    assert process.pid is None, "the process started anyway"
    processes.forget(request.node.nodeid)


@pytest.mark.distributed
def test_a_marked_test_starts_processes() -> None:
    assert subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True, text=True).stdout == "1\n"
