"""Private names of Python's standard library, kept here so that this package is the one place
where the project reads names outside its own that begin with an underscore (Python 3.10-3.12).
"""

from __future__ import annotations

import os


# Exit at once, without teardown (atexit, gloo's destructors): after a peer died, a collective
# in teardown could block forever. Documented, though underscored (Python 3.11).
def exit_now(code: int) -> None:
    os._exit(code)
