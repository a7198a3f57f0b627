"""The tower plan: which features form which tower, and which host runs it.

Keyed by feature and table names, never by graph nodes. Serialises to JSON and carries a
fingerprint of the model's embedding layout and the topology, so a stale plan is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from dmt_fx.analysis import ModelSites
from dmt_fx.errors import PlanError
from dmt_fx.topology import Topology

PLAN_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Tower:
    index: int
    host: int
    features: tuple[str, ...]
    tables: tuple[str, ...] = ()
    lookup_cost: float = 0.0  # bytes read per sample: sum of pooling factor x dim x 4
    memory_bytes: int = 0


@dataclasses.dataclass(frozen=True)
class TowerPlan:
    towers: tuple[Tower, ...]
    topology: str
    fingerprint: str = ""
    partitioner: str = "user"
    lookup_imbalance: float = 1.0  # max tower cost / mean tower cost
    memory_imbalance: float = 1.0
    balance_bound: float = float("inf")  # the partitioner guarantees both imbalances <= this
    changes_model: bool = False  # True once a compressing tower module is inserted

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(f for t in self.towers for f in t.features)

    def tower_of(self) -> dict[str, int]:
        return {f: t.index for t in self.towers for f in t.features}

    def __str__(self) -> str:
        """A plain-text table (the CLI renders the same data with rich)."""
        rows = [("tower", "host", "features", "lookup cost", "memory")]
        rows += [(str(t.index), str(t.host), ", ".join(t.features), f"{t.lookup_cost:g}", f"{t.memory_bytes:,} B")
                 for t in self.towers]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.append(f"topology {self.topology}, partitioner {self.partitioner}, lookup imbalance "
                     f"{self.lookup_imbalance:g}, memory imbalance {self.memory_imbalance:g} (bound {self.balance_bound:g})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["version"] = PLAN_VERSION
        if data["balance_bound"] == float("inf"):
            data["balance_bound"] = None
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TowerPlan:
        try:
            towers = tuple(
                Tower(int(t.get("index", i)), int(t["host"]), tuple(t["features"]),
                      tuple(t.get("tables", ())), float(t.get("lookup_cost", 0.0)),
                      int(t.get("memory_bytes", 0)))
                for i, t in enumerate(data["towers"])
            )
            bound = data.get("balance_bound")
            return cls(towers, str(data.get("topology", "")), str(data.get("fingerprint", "")),
                       str(data.get("partitioner", "user")), float(data.get("lookup_imbalance", 1.0)),
                       float(data.get("memory_imbalance", 1.0)),
                       float("inf") if bound is None else float(bound),
                       bool(data.get("changes_model", False)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PlanError(
                f"a plan that cannot be read ({type(exc).__name__}: {exc})",
                'JSON like {"topology": "2x4", "towers": [{"host": 0, "features": ["f0", "f1"]}, ...]}',
                ["write the plan with `dmt-fx plan TARGET --format json` and edit it"],
            ) from None

    @classmethod
    def from_json(cls, text: str) -> TowerPlan:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise PlanError(f"invalid JSON in the plan ({exc})", "a JSON object",
                            ["check the file; `dmt-fx plan TARGET --format json` writes a valid one"]) from None

    @classmethod
    def load(cls, source: TowerPlan | Mapping | str | os.PathLike) -> TowerPlan:
        """A plan object, a dict, a JSON string or a path to a JSON file."""
        if isinstance(source, TowerPlan):
            return source
        if isinstance(source, Mapping):
            return cls.from_dict(source)
        text = str(source)
        if text.lstrip().startswith("{"):
            return cls.from_json(text)
        try:
            with open(text) as handle:
                return cls.from_json(handle.read())
        except OSError as exc:
            raise PlanError(f"plan file {text!r} cannot be read ({exc.strerror})",
                            "a readable JSON plan file", ["check the path and its permissions"]) from None


def tower_loads(towers: list[list[str]], sites: ModelSites, pooling: Mapping[str, float]):
    """(lookup cost, memory bytes, tables) per tower."""
    loads = []
    for features in towers:
        tables = sorted({sites.feature(f).table for f in features})
        cost = sum(pooling.get(f, 1.0) * sites.feature(f).dim * 4 for f in features)
        loads.append((cost, sum(sites.table(t).memory_bytes for t in tables), tuple(tables)))
    return loads


def imbalance(values: list[float]) -> float:
    mean = sum(values) / len(values) if values else 0.0
    return max(values) / mean if mean > 0 else 1.0


def build_plan(groups: list[list[str]], sites: ModelSites, topology: Topology, pooling: Mapping[str, float],
               *, partitioner: str, balance_bound: float, hosts: list[int] | None = None) -> TowerPlan:
    """Assemble a TowerPlan (loads, imbalances, fingerprint) from feature groups."""
    hosts = hosts if hosts is not None else list(range(len(groups)))
    loads = tower_loads(groups, sites, pooling)
    towers = tuple(Tower(i, h, tuple(g), tables, round(cost, 3), mem)
                   for i, (g, h, (cost, mem, tables)) in enumerate(zip(groups, hosts, loads)))
    return TowerPlan(towers, str(topology), plan_fingerprint(sites, topology), partitioner,
                     round(imbalance([l[0] for l in loads]), 4), round(imbalance([l[1] for l in loads]), 4),
                     balance_bound)


def plan_fingerprint(sites: ModelSites, topology: Topology) -> str:
    return f"{sites.fingerprint()}-{topology}"


def validate_plan(plan: TowerPlan, sites: ModelSites, topology: Topology, pooling: Mapping[str, float]) -> TowerPlan:
    """Check a user-given plan against the model and topology; return it with loads filled in."""
    if plan.fingerprint and plan.fingerprint != plan_fingerprint(sites, topology):
        made_for = plan.fingerprint.rpartition("-")
        reason = (f"topology {plan.topology}" if made_for[2] != str(topology)
                  else "another model (its features, tables or sizes differ)")
        raise PlanError(f"a plan made for {reason}",
                        f"a plan for this model on topology {topology} (fingerprint {plan_fingerprint(sites, topology)})",
                        ["make a new plan with `dmt-fx plan TARGET --topology "
                         f"{topology} --format json`", "or drop the plan's 'fingerprint' field to skip this check"])
    _check_hosts(plan, topology)
    _check_features(plan, sites)
    _check_tables(plan, sites)
    groups = [list(t.features) for t in plan.towers]
    return build_plan(groups, sites, topology, pooling, partitioner=plan.partitioner,
                      balance_bound=plan.balance_bound, hosts=[t.host for t in plan.towers])


def _check_features(plan: TowerPlan, sites: ModelSites) -> None:
    known = [f.name for f in sites.features]
    named = list(plan.features)
    unknown = sorted(set(named) - set(known))
    missing = [f for f in known if f not in set(named)]
    repeated = sorted({f for f in named if named.count(f) > 1})
    problems = [f"unknown features {unknown}" if unknown else "",
                f"missing features {missing}" if missing else "",
                f"features in more than one tower {repeated}" if repeated else ""]
    problems = [p for p in problems if p]
    if problems:
        raise PlanError("a plan with " + "; ".join(problems),
                        f"every feature of the model exactly once: {known}",
                        ["list each feature in exactly one tower", "feature names are KJT keys (TorchRec) "
                         "or embedding module paths such as 'emb_l.3' (plain PyTorch)"])


def _check_hosts(plan: TowerPlan, topology: Topology) -> None:
    bad = [t.host for t in plan.towers if not 0 <= t.host < topology.num_hosts]
    if bad or not plan.towers:
        raise PlanError(f"tower hosts {bad}" if bad else "a plan with no towers",
                        f"hosts in 0..{topology.num_hosts - 1} (topology {topology})",
                        ["give each tower a host index below the number of hosts"])


def _check_tables(plan: TowerPlan, sites: ModelSites) -> None:
    where: dict[str, set[int]] = {}
    for tower in plan.towers:
        for f in tower.features:
            where.setdefault(sites.feature(f).table, set()).add(tower.index)
    split = {t: sorted(ix) for t, ix in where.items() if len(ix) > 1}
    if split:
        table, towers = next(iter(split.items()))
        sharing = [f.name for f in sites.features if f.table == table]
        raise PlanError(f"table {table!r} (features {sharing}) spread over towers {towers}",
                        "a table and all the features that share it in one tower",
                        [f"put {sharing} in the same tower"])
