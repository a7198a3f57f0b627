"""dmt_fx: turn flat recommendation models into Disaggregated Multi-Tower (DMT) models.

Compiler: `transform(model, topology)` captures the model with torch.fx, finds its
embedding lookups and interaction, plans towers and rewrites the graph (SPTT).
Runtime: `distribute(gm, ...)` runs that model on a (host x local) torch.distributed world.
"""

from __future__ import annotations

from dmt_fx.errors import (
    CaptureError,
    DMTError,
    ExampleInputsError,
    NoEmbeddingError,
    NoInteractionError,
    PassError,
    PlanError,
    TopologyError,
    UnsupportedEmbeddingError,
)
from dmt_fx.interactions import register_interaction
from dmt_fx.plan import Tower, TowerPlan
from dmt_fx.topology import Topology
from dmt_fx.tower_module import TowerSpec
from dmt_fx.transform import DMTResult, dmt_result, tower_plan, transform
from dmt_fx.distributed import distribute  # the runtime (isort: after transform)

__all__ = [
    "CaptureError", "DMTError", "DMTResult", "ExampleInputsError", "NoEmbeddingError",
    "NoInteractionError", "PassError", "PlanError", "TopologyError", "Tower", "TowerPlan",
    "Topology", "TowerSpec", "UnsupportedEmbeddingError", "distribute", "register_interaction", "dmt_result", "tower_plan", "transform",
]
__version__ = "0.1.0"
