"""The baselines registry: what `dmt-fx run --baseline`, the demo and the benchmarks compare DMT with.

A baseline is a builder `(model, *, topology, optimizer_class, optimizer_kwargs, plan) ->
(module, optimizer)` called on every rank after init_process_group, like
`dmt_fx.distribute`. Built-ins register through `register_baseline` in their own file of
this package (the package imports every file in it); a user registers from the file of
a TARGET, which every rank of `dmt-fx run` imports before it builds anything.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from dmt_fx.ir.plan import TowerPlan
from dmt_fx.ir.registry import Registry
from dmt_fx.ir.topology import Topology
from dmt_fx.runtime.groups import check_world

BaselineBuilder = Callable[..., tuple[nn.Module, torch.optim.Optimizer]]
FLAT = "flat"  # family of the original model under TorchRec DMP over the whole world


@dataclasses.dataclass(frozen=True)
class Baseline:
    name: str
    build: BaselineBuilder
    family: str  # "flat" ones are what the demo and the emulated bench call "best flat"


BASELINES: Registry[Baseline] = Registry(
    "baseline", "dmt_fx.baselines.register_baseline(name, builder) in the file of your TARGET")


def register_baseline(name: str, builder: BaselineBuilder, *, family: str = "custom") -> BaselineBuilder:
    """Make `name` a baseline of `dmt-fx run --baseline` and of the benchmarks.

    Args:
        name: the baseline's name (`--baseline name`).
        builder: `(model, *, topology, optimizer_class, optimizer_kwargs, plan) -> (module, optimizer)`,
            called on every rank with its copy of the original model.
        family: "flat" counts it in the best flat plan of the benchmarks.

    Returns:
        `builder`, so the function can be used as a decorator.

    Raises:
        DMTError: `name` is not a non-empty string.

    Example:
        >>> from torch.nn.parallel import DistributedDataParallel
        >>> from dmt_fx.baselines import baseline_names, register_baseline
        >>> def replicated(model, *, topology, optimizer_class, optimizer_kwargs, plan):
        ...     module = DistributedDataParallel(model)
        ...     return module, optimizer_class(module.parameters(), **optimizer_kwargs)
        >>> _ = register_baseline("replicated", replicated)
        >>> "replicated" in baseline_names()
        True
    """
    BASELINES.register(name, Baseline(name, builder, family))
    return builder


def baseline_names(family: str | None = None) -> tuple[str, ...]:
    """Registered baselines (of one family), in registration order."""
    return tuple(name for name, b in BASELINES.items() if family is None or b.family == family)


def build_baseline(name: str, model: nn.Module, *, topology: Topology | str,
                   optimizer_class: type = torch.optim.SGD, optimizer_kwargs: Mapping[str, Any] | None = None,
                   plan: TowerPlan | None = None) -> tuple[nn.Module, torch.optim.Optimizer]:
    """This rank's (module, optimizer) for baseline `name`; call on every rank after
    init_process_group. Takes ownership of `model`. `plan` (a dmt_fx TowerPlan) is for the
    baselines that build towers (None: they plan their own). The module takes this rank's
    local batch and returns its local outputs."""
    baseline = BASELINES.get(name)
    if isinstance(topology, str):
        topology = Topology.parse(topology)
    check_world(topology)
    return baseline.build(model, topology=topology, optimizer_class=optimizer_class,
                          optimizer_kwargs=dict(optimizer_kwargs or {}), plan=plan)
