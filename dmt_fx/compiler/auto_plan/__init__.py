"""plan="auto": plans chosen by the cost model (choose.py), per candidate (candidates.py),
with what it knows of shardings (shardings.py); the step-time model is `dmt_fx.cost`'s."""

from __future__ import annotations

from dmt_fx.compiler.auto_plan.candidates import Candidate
from dmt_fx.compiler.auto_plan.choose import COMPRESSIONS, DEFAULT_QUALITY_BUDGET, AutoOptions, AutoPlan, auto_plan
from dmt_fx.compiler.auto_plan.shardings import SHARDING_MODELS
from dmt_fx.cost.steptime import Hardware

__all__ = ["COMPRESSIONS", "DEFAULT_QUALITY_BUDGET", "SHARDING_MODELS", "AutoOptions", "AutoPlan", "Candidate",
           "Hardware", "auto_plan"]
