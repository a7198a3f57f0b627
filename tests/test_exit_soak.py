"""A job always ends: the user-style 2x2 job (`tests/user_job.py`: transform, distribute,
6 steps, all_reduce, barrier, destroy_process_group, return from main) launched again and
again under a competing CPU load; no rank may outlive its last step by more than 10 s.

Before the fix (runtime/shutdown.py) a rank could stay in `ProcessGroupGloo`'s destructor
forever at exit; the soak records the stacks of any rank past the limit (`tests/exit_soak.py`).
One launch of each ending (the user's, `dmt_fx.shutdown`) in the default suite, 50 launches
of the user's ending under `-m slow`.
"""

from __future__ import annotations

import pytest

from tests.exit_soak import soak


def _check(result, launches: int) -> None:
    assert result.launches == launches and result.failures == 0, result
    assert result.hangs == 0, "\n".join(result.stacks)
    assert result.slow_exits == 0 and max(result.exit_delays_s) <= 10.0, result.exit_delays_s


@pytest.mark.parametrize("finish", ["user", "shutdown"])
def test_a_job_ends(tmp_path, finish) -> None:
    _check(soak(1, finish=finish, load=False, workdir=str(tmp_path)), 1)


@pytest.mark.slow
def test_exit_soak(tmp_path) -> None:
    result = soak(50, workdir=str(tmp_path))
    print(f"50 launches: {result.hangs} hangs, slowest exit {max(result.exit_delays_s):.2f} s")
    _check(result, 50)
