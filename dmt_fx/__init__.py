"""dmt_fx: turn flat recommendation models into Disaggregated Multi-Tower (DMT) models.

Compiler (`dmt_fx.compiler`): `transform(model, topology)` captures the model with torch.fx,
finds its embedding lookups and interaction, plans towers and rewrites the graph (SPTT).
Runtime (`dmt_fx.runtime`): `distribute(gm, ...)` runs that model on a (host x local)
torch.distributed world. The typed contract between them lives in `dmt_fx.ir`.
"""

from __future__ import annotations

from dmt_fx.compiler.auto_plan import AutoOptions
from dmt_fx.compiler.interactions import register_interaction
from dmt_fx.compiler.partitioners import register_partitioner
from dmt_fx.compiler.tower_modules import TowerSpec, register_tower_module
from dmt_fx.compiler.transform import transform
from dmt_fx.ir.errors import (
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
from dmt_fx.ir.plan import Tower, TowerPlan
from dmt_fx.ir.result import DMTResult, dmt_result, tower_plan
from dmt_fx.ir.topology import Topology
from dmt_fx.runtime.distribute import distribute
from dmt_fx.runtime.shutdown import shutdown

__all__ = [
    "AutoOptions", "CaptureError", "DMTError", "DMTResult", "ExampleInputsError", "NoEmbeddingError",
    "NoInteractionError", "PassError", "PlanError", "TopologyError", "Tower", "TowerPlan",
    "Topology", "TowerSpec", "UnsupportedEmbeddingError", "distribute", "dmt_result",
    "register_interaction", "register_partitioner", "register_tower_module", "shutdown", "tower_plan",
    "transform",
]
__version__ = "0.1.0"
