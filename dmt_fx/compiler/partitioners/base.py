"""Partitioners: the registry `transform(partitioner=...)` reads, and the call that runs one.

A partitioner is a function `(PartitionRequest) -> TowerPlan | list of feature-name groups`
registered under a name with `register_partitioner`; the built-ins (balanced, learned,
random) are one file each in this package and register through that same call, so
`PARTITIONERS.names()` is the one list of them (CLI choices and help texts read it).
Whatever a partitioner returns is checked like a user's plan (every feature once, tables
whole, hosts in range): a new partitioner cannot produce a plan the runtime would refuse.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence, Union

from dmt_fx.compiler.plans import build_plan, check_towers_per_domain, validate_plan
from dmt_fx.ir.plan import TowerPlan
from dmt_fx.ir.registry import Registry
from dmt_fx.ir.sites import ModelSites
from dmt_fx.ir.topology import Topology


@dataclasses.dataclass(frozen=True)
class PartitionRequest:
    """What a partitioner is given."""

    sites: ModelSites  # the analysed model: features, tables, dims
    topology: Topology
    pooling: Mapping[str, float]  # measured ids per bag of each feature (1.0 when unknown)
    model: Any = None  # the original (trained) model, for partitioners that probe it
    example_inputs: Sequence[Any] | None = None
    seed: int = 0
    towers_per_domain: int = 1  # k: H x k towers, tower t on domain t // k (plans.tower_count)


PartitionResult = Union[TowerPlan, Sequence[Sequence[str]]]
Partitioner = Callable[[PartitionRequest], PartitionResult]

PARTITIONERS: Registry[Partitioner] = Registry(
    "partitioner", "dmt_fx.compiler.partitioners.register_partitioner(name, fn), or pass plan=...")


def register_partitioner(name: str, fn: Partitioner) -> Partitioner:
    """Teach dmt_fx a partitioner; `transform(partitioner=name)` then plans with it.

    `fn(request)` returns a TowerPlan, or the towers' feature names, one list per tower
    (tower t on domain t // request.towers_per_domain); either is validated against the model and topology.

    Args:
        name: the name for `transform(partitioner=name)` and `--partitioner`.
        fn: `(PartitionRequest) -> TowerPlan | list[list[str]]`.

    Returns:
        `fn`, so the function can be used as a decorator.

    Raises:
        DMTError: `name` is not a non-empty string. A plan `fn` returns that splits a table
            or misses a feature is refused by `transform` (`PlanError`).

    Example:
        >>> import dmt_fx
        >>> from dmt_fx.models.zoo import default_dlrm
        >>> def user_alone(request):
        ...     names = [f.name for f in request.sites.features]
        ...     return [["user_id"], [n for n in names if n != "user_id"]]
        >>> _ = dmt_fx.register_partitioner("user_alone", user_alone)
        >>> model, _ = default_dlrm()
        >>> dmt_fx.tower_plan(dmt_fx.transform(model, "2x2", partitioner="user_alone")).towers[0].features
        ('user_id',)
    """
    return PARTITIONERS.register(name, fn)


def run_partitioner(name: str, fn: Partitioner, request: PartitionRequest) -> TowerPlan:
    """The validated plan of `fn` (registered as `name`, or a user's function)."""
    result = fn(request)
    if isinstance(result, TowerPlan):
        plan = result
    else:
        groups = [list(group) for group in result]
        plan = build_plan(groups, request.sites, request.topology, request.pooling, partitioner=name,
                          balance_bound=float("inf"), towers_per_domain=request.towers_per_domain)  # no guarantee from a partitioner we do not know
    return validate_plan(plan, request.sites, request.topology, request.pooling)


def make_partition(partitioner: str | Partitioner, sites: ModelSites, topology: Topology,
                   pooling: Mapping[str, float], *, model: Any = None,
                   example_inputs: Sequence[Any] | None = None, seed: int = 0,
                   towers_per_domain: int = 1) -> TowerPlan:
    """The plan of a registered partitioner (by name) or of a partitioner function;
    `towers_per_domain` k: H x k towers, tower t on domain t // k."""
    check_towers_per_domain(towers_per_domain)  # before a partitioner (maybe a slow one) runs
    request = PartitionRequest(sites, topology, pooling, model, example_inputs, seed, towers_per_domain)
    if callable(partitioner):
        return run_partitioner(getattr(partitioner, "__name__", "custom"), partitioner, request)
    return run_partitioner(partitioner, PARTITIONERS.get(partitioner), request)
