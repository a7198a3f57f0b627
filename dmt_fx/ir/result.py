"""The transform result: what `transform` records in `gm.meta["dmt"]` for the runtime.

The typed hand-off between compiler and runtime: the plan, the analysed sites, the
topology and where each tower's modules live in the rewritten graph.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import torch.fx as fx
import torch.nn as nn

from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.plan import TowerPlan
from dmt_fx.ir.sites import ModelSites
from dmt_fx.ir.topology import Topology


@dataclasses.dataclass(frozen=True)
class PassRecord:
    name: str
    seconds: float
    nodes_before: int
    nodes_after: int
    changes_model: bool

    def __str__(self) -> str:
        delta = self.nodes_after - self.nodes_before
        note = " (changes the model)" if self.changes_model else ""
        return (f"{self.name}: nodes {self.nodes_before} -> {self.nodes_after} ({delta:+d}), "
                f"{self.seconds * 1000:.1f} ms{note}")



@dataclasses.dataclass(frozen=True)
class DMTResult:
    """What `transform` records in `gm.meta["dmt"]`: the typed hand-off to the runtime."""

    plan: TowerPlan
    sites: ModelSites
    topology: Topology
    route: str
    passes: tuple[PassRecord, ...]
    renames: Mapping[str, str]  # module path in the DMT model -> path in the original


def tower_plan(gm: nn.Module) -> TowerPlan:
    """The tower plan of a model made by `transform`."""
    return dmt_result(gm).plan


def dmt_result(gm: nn.Module) -> DMTResult:
    result = getattr(gm, "meta", {}).get("dmt") if isinstance(gm, fx.GraphModule) else None
    if not isinstance(result, DMTResult):
        raise DMTError(f"a {type(gm).__name__} not made by dmt_fx.transform",
                       "the GraphModule returned by dmt_fx.transform(model, topology)",
                       ["call dmt_fx.transform first"])
    return result
