"""Shared pytest configuration for the dmt_fx test suite.

Hypothesis: the "ci" profile (200 examples, no deadline, derandomized so CI runs are
reproducible) is loaded by default. Override the number of examples with the
environment variable DMT_HYPOTHESIS_EXAMPLES (e.g. 20 for a quick local run, 2000 for a
long soak), or pick another registered profile with HYPOTHESIS_PROFILE ("dev" runs 20
random, non-derandomized examples).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

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
