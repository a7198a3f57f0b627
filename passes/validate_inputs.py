"""Insert the run-time input validator at the top of the graph (on by default).

Algorithm:
  1. Sparse inputs: every KJT a collection reads, with its keys (over all collections
     reading it) and the rows of each key's table.
  2. Plain lookups: each lookup's id tensor as it enters the peer exchange, and its rows.
  3. Dense inputs: placeholders that feed no lookup (for the batch-size check).
  4. One impure `call_module` node right after the last of those inputs checks them all.
Preserves numerics: it reads the inputs and returns nothing.
"""

from __future__ import annotations

import torch.fx as fx

from dmt_fx.compiler.validation import InputValidator
from dmt_fx.ir import ops
from dmt_fx.ir.graph import tag
from dmt_fx.ir.sites import ModelSites

PASS = "validate_inputs"
PATH = "dmt_input_validator"


def _role(node: fx.Node) -> str | None:
    return node.meta.get("dmt", {}).get("role")


def _sparse(gm: fx.GraphModule, sites: ModelSites) -> tuple[list, list[fx.Node]]:
    """Step 1."""
    site_of = {s.node: s for s in sites.sites}
    rows_by_input: dict[fx.Node, dict[str, int]] = {}
    weighted_by_input: dict[fx.Node, bool] = {}
    for node in gm.graph.nodes:
        if _role(node) != "select_features":
            continue
        kjt, rows = node.args[0], rows_by_input.setdefault(node.args[0], {})
        for name in site_of[node.meta["dmt"]["origin"]].features:
            feature = sites.feature(name)
            size = sites.table(feature.table).num_embeddings
            rows[feature.key] = min(rows.get(feature.key, size), size)
            weighted_by_input[kjt] = weighted_by_input.get(kjt, False) or feature.weighted
    specs = [(n.name, tuple(rows), rows, weighted_by_input[n]) for n, rows in rows_by_input.items()]
    return specs, list(rows_by_input)


def _plain(gm: fx.GraphModule, sites: ModelSites) -> tuple[list, list[fx.Node]]:
    """Step 2: ids of plain lookups, traced back through the exchange to where they enter it."""
    site_of = {s.node: s for s in sites.sites}
    specs, nodes = [], []
    for node in gm.graph.nodes:
        if _role(node) != "tower_lookup" or site_of[node.meta["dmt"]["origin"]].kind == "torchrec_ebc":
            continue
        ids = node.args[1] if node.op == "call_function" else (node.args[0] if node.args else node.kwargs["input"])
        if ids.target is __import__("operator").getitem and ids.args[0].target is ops.peer_input_exchange:
            ids = ids.args[0].args[0][ids.args[1]]
        # a joint table's field lookups name their feature (each its own row range)
        feature = sites.feature(node.meta["dmt"].get("features", site_of[node.meta["dmt"]["origin"]].features)[0])
        specs.append((ids.name, feature.name, sites.table(feature.table).num_embeddings))
        nodes.append(ids)
    return specs, nodes


def validate_inputs_pass(gm: fx.GraphModule, *, sites: ModelSites) -> fx.GraphModule:
    sparse_specs, sparse_nodes = _sparse(gm, sites)
    plain_specs, plain_nodes = _plain(gm, sites)
    dense = [n for n in gm.graph.nodes if n.op == "placeholder" and n.name in set(sites.dense_inputs)]  # Step 3
    inputs = sparse_nodes + plain_nodes + dense
    if not inputs:
        return gm
    gm.add_submodule(PATH, InputValidator(sparse_specs, plain_specs, [n.name for n in dense]))
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    with gm.graph.inserting_after(max(inputs, key=order.__getitem__)):  # Step 4
        tag(gm.graph.call_module(PATH, tuple(inputs)), PASS, "validate_inputs")
    return gm
