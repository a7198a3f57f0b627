"""The transform result: what `transform` records in `gm.meta["dmt"]` for the runtime.

The typed hand-off between compiler and runtime: the plan, the analysed sites, the
topology and where each tower's modules live in the rewritten graph.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import torch.fx as fx
import torch.nn as nn

from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.names import tower_collection_path, tower_module_path
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
class TowerModules:
    """Where one tower's modules are in the rewritten model (paths named by `dmt_fx.ir.names`)."""

    tower: int
    host: int
    # embedding site module path in the original model -> the tower's slice of that collection;
    # only the TorchRec collections the tower reads a feature of
    collections: Mapping[str, str]
    tower_module: str | None = None  # None when the tower_modules pass did not run


@dataclasses.dataclass(frozen=True)
class DMTResult:
    """What `transform` records in `gm.meta["dmt"]`: the typed hand-off to the runtime."""

    plan: TowerPlan
    sites: ModelSites
    topology: Topology
    route: str
    passes: tuple[PassRecord, ...]
    renames: Mapping[str, str]  # module path in the DMT model -> path in the original
    towers: tuple[TowerModules, ...] = ()  # one per tower of the plan, in plan order

    @classmethod
    def of(cls, gm: fx.GraphModule, plan: TowerPlan, sites: ModelSites, topology: Topology, route: str,
           passes: Sequence[PassRecord], renames: Mapping[str, str]) -> DMTResult:
        """The result of the passes run on `gm`, with where they put each tower's modules."""
        return cls(plan, sites, topology, route, tuple(passes), dict(renames), locate_towers(gm, plan, sites))

    def tower_modules(self, tower: int) -> TowerModules:
        """The modules of tower `tower` (its index in the plan)."""
        for entry in self.towers:
            if entry.tower == tower:
                return entry
        raise DMTError(f"no module record for tower {tower} (records for {[t.tower for t in self.towers]})",
                       "a result made by dmt_fx.transform, which records every tower's modules",
                       ["transform the model again with this version of dmt_fx"])


def locate_towers(gm: fx.GraphModule, plan: TowerPlan, sites: ModelSites) -> tuple[TowerModules, ...]:
    """Every tower's collections and tower module, where the passes put them."""
    located = []
    for tower in plan.towers:
        collections = {site.module: tower_collection_path(tower.index, site.module) for site in sites.sites}
        collections = {site: path for site, path in collections.items() if _has_module(gm, path)}
        module = tower_module_path(tower.index)
        located.append(TowerModules(tower.index, tower.host, collections,
                                    module if _has_module(gm, module) else None))
    return tuple(located)


def _has_module(gm: nn.Module, path: str) -> bool:
    try:
        gm.get_submodule(path)
    except AttributeError:
        return False
    return True


def tower_plan(gm: nn.Module) -> TowerPlan:
    """The tower plan of a model made by `transform`.

    Args:
        gm: the `GraphModule` `transform` returned.

    Returns:
        Its `TowerPlan`: `.towers[i].features`, `.host`, the imbalances, `.to_json()`.

    Raises:
        DMTError: `gm` was not made by `dmt_fx.transform`.

    Example:
        >>> import dmt_fx
        >>> from dmt_fx.models.zoo import default_dlrm
        >>> model, _ = default_dlrm()
        >>> plan = dmt_fx.tower_plan(dmt_fx.transform(model, "2x2"))
        >>> [t.host for t in plan.towers], sorted(f for t in plan.towers for f in t.features)[:3]
        ([0, 1], ['category', 'city', 'device'])
    """
    return dmt_result(gm).plan


def dmt_result(gm: nn.Module) -> DMTResult:
    result = getattr(gm, "meta", {}).get("dmt") if isinstance(gm, fx.GraphModule) else None
    if not isinstance(result, DMTResult):
        raise DMTError(f"a {type(gm).__name__} not made by dmt_fx.transform",
                       "the GraphModule returned by dmt_fx.transform(model, topology)",
                       ["call dmt_fx.transform first"])
    return result
