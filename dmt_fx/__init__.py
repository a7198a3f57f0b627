"""dmt_fx: turn flat recommendation models into Disaggregated Multi-Tower (DMT) models.

Compiler: `transform(model, topology)` captures the model with torch.fx, finds its
embedding lookups and interaction, plans towers and rewrites the graph (SPTT).
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
from dmt_fx.plan import Tower, TowerPlan
from dmt_fx.topology import Topology
from dmt_fx.transform import DMTResult, dmt_result, tower_plan, transform

__all__ = [
    "CaptureError", "DMTError", "DMTResult", "ExampleInputsError", "NoEmbeddingError",
    "NoInteractionError", "PassError", "PlanError", "TopologyError", "Tower", "TowerPlan",
    "Topology", "UnsupportedEmbeddingError", "dmt_result", "tower_plan", "transform",
]
__version__ = "0.1.0"
