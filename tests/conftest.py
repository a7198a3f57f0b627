"""Shared pytest configuration for the dmt_fx test suite.

Hypothesis: the "ci" profile (200 examples, no deadline, derandomized so CI runs are
reproducible) is loaded by default. Override the number of examples with the
environment variable DMT_HYPOTHESIS_EXAMPLES (e.g. 20 for a quick local run, 2000 for a
long soak), or pick another registered profile with HYPOTHESIS_PROFILE ("dev" runs 20
random, non-derandomized examples).

Markers (pyproject.toml): `slow` tests are opt-in (`-m slow`); `distributed` marks every test
that starts a process (torchrun worlds, torch.multiprocessing, dmt-fx subprocesses), enforced
by tests/harness/processes.py, so `pytest -m "not distributed"` is a quick single-process run.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from tests.harness import processes

_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large]

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=_SUPPRESSED,
)
settings.register_profile(
    "dev",
    max_examples=20,
    deadline=None,
    suppress_health_check=_SUPPRESSED,
)

_profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
_examples = os.environ.get("DMT_HYPOTHESIS_EXAMPLES")
if _examples:
    settings.register_profile(
        f"{_profile}-examples-{int(_examples)}",
        settings.get_profile(_profile),
        max_examples=int(_examples),
    )
    _profile = f"{_profile}-examples-{int(_examples)}"
settings.load_profile(_profile)


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def world_of_one():
    """A real gloo world of this one process, for tests that call `distribute` in-process."""
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- markers


def pytest_configure(config: pytest.Config) -> None:
    processes.install()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`slow` tests are opt-in: deselected unless the -m expression names them (`-m slow`,
    `-m "slow and distributed"`), so `-m "not distributed"` leaves them out too."""
    if "slow" in (config.option.markexpr or ""):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    processes.enter(item)
    try:
        yield
    finally:
        processes.leave()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    started = processes.unmarked(item.nodeid)
    if started and report.passed and report.when == "call":
        report.outcome = "failed"
        report.longrepr = f"started a process ({started}) without @pytest.mark.{processes.MARKER}"
