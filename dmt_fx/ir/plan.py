"""The tower plan: which features form which tower, and which host runs it.

Keyed by feature and table names, never by graph nodes. Serialises to JSON and carries a
fingerprint of the model's embedding layout and the topology, so a stale plan is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from dmt_fx.ir.errors import PlanError

PLAN_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Tower:
    index: int
    host: int
    features: tuple[str, ...]
    tables: tuple[str, ...] = ()
    lookup_cost: float = 0.0  # bytes read per sample: sum of pooling factor x dim x 4
    memory_bytes: int = 0
    # The intra-host sharding of this tower's tables (a name of the runtime's SHARDINGS, e.g.
    # "row_wise"), as plan="auto" chose it; None: distribute's `sharding=` argument decides.
    sharding: str | None = None


@dataclasses.dataclass(frozen=True)
class TowerPlan:
    """Which features form each tower and on which host it runs: what `transform` plans.

    Read it with `dmt_fx.tower_plan(gm)`; write one by hand, edit the JSON of
    `dmt-fx plan --format json`, and pass it back as `transform(..., plan=...)`, which
    checks it against the model and topology (fingerprint, every feature once, tables whole).

    Args:
        towers: one `Tower(features, host)` per tower (optional `sharding`).
        topology: the topology's "HxL".
        fingerprint: of the embedding layout the plan was made for ("" skips the check).
        partitioner, lookup_imbalance, memory_imbalance, balance_bound, changes_model,
            warnings: what the partitioner reports; a hand-written plan may leave them.

    Raises:
        PlanError: from `TowerPlan.load` / `from_json`, when the text or file is not a plan,
            and from `transform` when the plan does not fit the model or topology.

    Example:
        >>> import dmt_fx
        >>> from dmt_fx.models.zoo import default_dlrm
        >>> model, _ = default_dlrm()
        >>> plan = dmt_fx.tower_plan(dmt_fx.transform(model, "2x2"))
        >>> again = dmt_fx.TowerPlan.from_json(plan.to_json())
        >>> again.towers == plan.towers
        True
        >>> gm = dmt_fx.transform(model, "2x2", plan=again)
    """

    towers: tuple[Tower, ...]
    topology: str
    fingerprint: str = ""
    partitioner: str = "user"
    lookup_imbalance: float = 1.0  # max tower cost / mean tower cost
    memory_imbalance: float = 1.0
    balance_bound: float = float("inf")  # the partitioner guarantees both imbalances <= this
    changes_model: bool = False  # True once a compressing tower module is inserted
    # What the analysis could not do for this model and why (e.g. a joint table whose offsets
    # are not constants stays whole, in one tower): shown by `dmt-fx plan`.
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.host_shardings()  # towers of one host that disagree are refused when the plan is made

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(f for t in self.towers for f in t.features)

    def host_shardings(self) -> dict[int, str]:
        """Host -> the sharding its towers name. A host's k towers share one sharded lookup
        (their tables are sharded together), so they must agree; towers naming none take the
        host's; a host none of whose towers names one is absent (distribute's default applies)."""
        named: dict[int, set[str]] = {}
        for t in self.towers:
            if t.sharding is not None:
                named.setdefault(t.host, set()).add(t.sharding)
        clash = {h: sorted(s) for h, s in named.items() if len(s) > 1}
        if clash:
            host, names = next(iter(sorted(clash.items())))
            raise PlanError(f"towers on host {host} with different shardings {names}",
                            "one sharding per host: a host's towers share one sharded lookup",
                            [f"give every tower on host {host} the same 'sharding'",
                             "or drop 'sharding' from all but one of them (they take the host's)"])
        return {h: next(iter(s)) for h, s in named.items()}

    def sharding_of_host(self, host: int, default: str) -> str:
        """The intra-host sharding of `host`: its towers' (host_shardings), else `default`."""
        return self.host_shardings().get(host, default)

    def with_shardings(self, shardings: list[str | None] | tuple[str | None, ...]) -> TowerPlan:
        """The plan with tower i's sharding set to shardings[i]."""
        towers = tuple(dataclasses.replace(t, sharding=s) for t, s in zip(self.towers, shardings, strict=True))
        return dataclasses.replace(self, towers=towers)

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
        lines += [f"WARNING: {w}" for w in self.warnings]
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
                      int(t.get("memory_bytes", 0)), _sharding(t.get("sharding")))
                for i, t in enumerate(data["towers"])
            )
            bound = data.get("balance_bound")
            return cls(towers, str(data.get("topology", "")), str(data.get("fingerprint", "")),
                       str(data.get("partitioner", "user")), float(data.get("lookup_imbalance", 1.0)),
                       float(data.get("memory_imbalance", 1.0)),
                       float("inf") if bound is None else float(bound),
                       bool(data.get("changes_model", False)), tuple(str(w) for w in data.get("warnings", ())))
        except PlanError:
            raise
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


def _sharding(value: Any) -> str | None:
    """A tower's JSON 'sharding': absent or null (plans written before the field) is None."""
    return None if value is None else str(value)
