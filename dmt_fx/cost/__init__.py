"""The cost model, in one place: wire bytes (wire.py), link tiers (links.py), traffic per rank
(traffic.py), the one step-time formula (steptime.py), its parameters (params.py: today's
constants or a sweep's fit, loadable by `AutoOptions(cost_params=...)`), the fits (fit.py:
alpha/beta from the probe; sweep.py: the step model over a sweep) and measured compute.

It imports only `dmt_fx.ir` and libraries, so the compiler's plan="auto", the runtime's
qcomms, the benches (`dmt_fx.bench`) and `benchmarks/` all use this one copy.
"""

from __future__ import annotations

from dmt_fx.cost.links import Tier, TierLoad, Tiers, per_collective, tiers_from, tiers_of
from dmt_fx.cost.params import DEFAULT_PARAMS, SCHEMA, CostParams, load_params
from dmt_fx.cost.steptime import Hardware, StepLoad, breakdown, predict, step_terms
from dmt_fx.cost.traffic import analytic_traffic

__all__ = ["DEFAULT_PARAMS", "SCHEMA", "CostParams", "Hardware", "StepLoad", "Tier", "TierLoad", "Tiers",
           "analytic_traffic", "breakdown", "load_params", "per_collective", "predict", "step_terms", "tiers_from",
           "tiers_of"]
