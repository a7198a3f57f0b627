"""Data behind the `dmt-fx` commands: diff graphs, summarise a plan.

Everything here returns plain, JSON-able Python data; rendering (rich tables) lives in
`dmt_fx.cli.tables`, so scripts and tests can use these functions without a terminal.
"""

from __future__ import annotations

from typing import Any

import torch.fx as fx
import torch.nn as nn

from dmt_fx._compat import qualified_name
from dmt_fx.compiler.capture import capture
from dmt_fx.compiler.tower_modules import CompressingTowerModule
from dmt_fx.compiler.tower_modules.sequence import SequenceTower
from dmt_fx.cost import wire
from dmt_fx.ir.result import dmt_result

EXCHANGE_ROLES = ("peer_input_exchange", "peer_output_exchange")
# the one byte model (dmt_fx.cost.wire), re-exported under the names this module had
ID_BYTES, LENGTH_BYTES, EMBEDDING_BYTES = wire.ID_BYTES, wire.LENGTH_BYTES, wire.EMBEDDING_BYTES
_ARGS_WIDTH = 80


# ---------------------------------------------------------------- graph diff


def graph_diff(original_gm: fx.GraphModule, dmt_gm: fx.GraphModule) -> dict[str, Any]:
    """Node-level diff of a captured model and its DMT rewrite (JSON-able).

    A node is "inserted" when a pass tagged it (`meta["dmt"]`), "removed" when its name is
    in the original graph only, else "kept". `towers` lists inserted nodes per tower;
    `shared` the inserted nodes of no tower (the merges)."""
    new_names = {n.name for n in dmt_gm.graph.nodes}
    original = [_row(n, "kept" if n.name in new_names else "removed") for n in original_gm.graph.nodes]
    rewritten = [_row(n, "inserted" if _is_inserted(n) else "kept") for n in dmt_gm.graph.nodes]
    towers: dict[str, list[str]] = {}
    shared: list[str] = []
    for row in rewritten:
        if row["status"] == "inserted":
            if row["tower"] is None:
                shared.append(row["name"])
            else:
                towers.setdefault(str(row["tower"]), []).append(row["name"])
    return {
        "original": original,
        "rewritten": rewritten,
        "inserted": sum(r["status"] == "inserted" for r in rewritten),
        "removed": sum(r["status"] == "removed" for r in original),
        "towers": dict(sorted(towers.items(), key=lambda kv: int(kv[0]))),
        "shared": shared,
    }


def _is_inserted(node: fx.Node) -> bool:
    return isinstance(node.meta.get("dmt"), dict)


def _row(node: fx.Node, status: str) -> dict[str, Any]:
    meta = node.meta.get("dmt") if _is_inserted(node) else {}
    return {"name": node.name, "op": node.op, "target": readable_target(node), "args": short_args(node),
            "status": status, "tower": meta.get("tower"), "role": meta.get("role")}


def readable_target(node: fx.Node) -> str:
    target = node.target
    if isinstance(target, str):
        return target
    try:
        name = qualified_name(target)  # torch.relu, not torch._VariableFunctionsClass.relu
    except Exception:  # a callable torch cannot name (a lambda, a partial)
        name = getattr(target, "__qualname__", None) or repr(target)
    return name.replace("_operator.", "operator.", 1).replace("builtins.", "", 1)


def short_args(node: fx.Node, width: int = _ARGS_WIDTH) -> str:
    parts = [_fmt(a) for a in node.args] + [f"{k}={_fmt(v)}" for k, v in node.kwargs.items()]
    text = ", ".join(parts)
    return text if len(text) <= width else text[: width - 3] + "..."


def _fmt(value: Any) -> str:
    if isinstance(value, fx.Node):
        return value.name
    if isinstance(value, tuple):
        return "(" + ", ".join(_fmt(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_fmt(v)}" for k, v in value.items()) + "}"
    return repr(value)


# ---------------------------------------------------------------- plan report


def original_graph(model: nn.Module, example_inputs: tuple | None) -> fx.GraphModule:
    """The model captured as transform captures it, before any pass."""
    return capture(model, example_inputs)[0]


def plan_report(gm: fx.GraphModule, batch_size: int = 512) -> dict[str, Any]:
    """The plan of a DMT model with estimated cross-host traffic (JSON-able).

    Bytes per step per rank, for tower t with features F_t, local batch B and H hosts:
      ids exchange    = B * (sum_f pooling_f * 8 + |F_t| * 8) * (H - 1) / H
      output exchange = B * (sum_f dim_f) * 4 * (H - 1) / H   (the tower module's output width
                      instead of sum_f dim_f when tower modules compress; a sequence feature
                      counts dim_f * its mean length: one row per id)
    8 bytes per int64 id and per int64 length, fp32 outputs (`dmt_fx.cost.wire`, what the
    traffic meter measures; the split-size handshake is left out); (H - 1) / H is the share of a
    rank's batch that lives on other hosts. The plan stores only each tower's lookup cost
    (sum_f pooling_f * dim_f * 4), so sum_f pooling_f is estimated as
    lookup_cost / (4 * mean dim); exact when the tower's dims are equal, 1 per feature
    when the cost is unknown."""
    result = dmt_result(gm)
    plan, sites, hosts = result.plan, result.sites, result.topology.num_hosts
    exchanges = _exchange_nodes(gm)
    collectives = []
    widths = _compressed_widths(gm)
    for tower in plan.towers:
        dims = [sites.feature(f).dim for f in tower.features]
        # a sequence feature sends back one row per id: its mean length of rows per sample
        width = widths.get(tower.index)  # an int (compressing), or per feature (a sequence tower module)
        reduced = width if isinstance(width, dict) else {}
        rows = sum(reduced.get(f.name, f.dim * (f.mean_length if f.sequence else 1.0))
                   for f in map(sites.feature, tower.features))
        ids, outs = _tower_bytes(tower.lookup_cost, dims, batch_size, hosts, width if isinstance(width, int) else rows)
        for kind, size in zip(EXCHANGE_ROLES, (ids, outs)):
            collectives.append({"name": exchanges.get((kind, tower.index), f"{kind}[{tower.index}]"),
                                "kind": kind, "tower": tower.index, "group": "cross-host",
                                "bytes_per_step": size, "direction": "forward"})
    bound = None if plan.balance_bound == float("inf") else plan.balance_bound
    return {
        "topology": str(result.topology), "partitioner": plan.partitioner, "fingerprint": plan.fingerprint,
        "lookup_imbalance": plan.lookup_imbalance, "memory_imbalance": plan.memory_imbalance,
        "balance_bound": bound, "batch_size": batch_size,
        "towers": [{"tower": t.index, "host": t.host, "features": list(t.features), "tables": list(t.tables),
                    "lookup_cost": t.lookup_cost, "memory_bytes": t.memory_bytes} for t in plan.towers],
        "collectives": collectives,
        "interaction": {"node": sites.interaction.node, "kind": sites.interaction.kind},
        "route": result.route,
        "changes_model": plan.changes_model,
        "composites": _composites(sites, plan.tower_of()),
        "joint_tables": _joint_tables(sites, plan),
        "sequences": _sequences(sites, plan, gm.meta.get("dmt_sequence_reductions", {})),
        "warnings": list(plan.warnings),
    }


def _sequences(sites: Any, plan: Any, reductions: dict[str, Any]) -> list[dict[str, Any]]:
    """Sequence (unpooled) features: their towers, mean ids per sample on the example batch,
    and the model's own reduction of each (`reduction`: whether a sequence tower module can
    take its place; compiler/sequence_reductions.py), where the transform had example inputs."""
    tower_of = plan.tower_of()
    return [{"feature": f.name, "table": f.table, "dim": f.dim, "mean_length": f.mean_length,
             "tower": tower_of[f.name], **({"reduction": reductions[f.name]} if f.name in reductions else {})}
            for f in sites.features if f.sequence]


def _joint_tables(sites: Any, plan: Any) -> list[dict[str, Any]]:
    """Joint tables split by field: table -> fields -> (row range, tower, host)."""
    tower_of, host_of = plan.tower_of(), {t.index: t.host for t in plan.towers}
    rows = []
    for name, tables in sites.joint_tables().items():
        fields = []
        for table in tables:
            feature = next(f for f in sites.features if f.table == table.name)
            tower = tower_of[feature.name]
            fields.append({"feature": feature.name, "field": feature.field, "table": table.name,
                           "rows": [table.row_offset, table.row_offset + table.num_embeddings],
                           "tower": tower, "host": host_of[tower]})
        rows.append({"table": name, "param": tables[0].param, "fields": fields})
    return rows


def _composites(sites: Any, tower_of: dict[str, int]) -> list[dict[str, Any]]:
    """Embeddings made of several tables (a quotient-remainder pair): one tower each."""
    rows = []
    for unit, tables in sites.composites().items():
        features = [f.name for f in sites.features if f.unit == unit]
        rows.append({"module": unit, "tables": list(tables), "features": features,
                     "tower": tower_of[features[0]]})
    return rows


def _compressed_widths(gm: fx.GraphModule) -> dict[int, Any]:
    """Tower index -> output width of its compressing tower module (none for identity towers),
    or for a sequence tower module (`seq_mean`, ...) its features' reduced widths by name."""
    widths: dict[int, Any] = {m.spec.index: m.spec.out_width for m in gm.modules()
                              if isinstance(m, CompressingTowerModule)}
    widths.update({m.spec.index: dict(zip(m.features, m.widths)) for m in gm.modules()
                   if isinstance(m, SequenceTower)})
    return widths


def _tower_bytes(lookup_cost: float, dims: list[int], batch: int, hosts: int,
                 out_width: int | None = None) -> tuple[int, int]:
    share = (hosts - 1) / hosts
    mean_dim = sum(dims) / len(dims) if dims else 1.0
    pooling = lookup_cost / (EMBEDDING_BYTES * mean_dim) if lookup_cost > 0 else float(len(dims))
    ids = wire.kjt_bytes(batch, len(dims), batch * pooling) * share
    outs = wire.pooled_bytes(batch, sum(dims) if out_width is None else out_width) * share
    return round(ids), round(outs)


def _exchange_nodes(gm: fx.GraphModule) -> dict[tuple[str, int], str]:
    found = {}
    for node in gm.graph.nodes:
        meta = node.meta.get("dmt")
        if isinstance(meta, dict) and meta.get("role") in EXCHANGE_ROLES:
            found[(meta["role"], meta.get("tower"))] = node.name
    return found
