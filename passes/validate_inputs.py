"""Insert the run-time input validator at the top of the graph (on by default).

Algorithm:
  1. Sparse inputs: every KJT a collection reads, with its keys (over all collections
     reading it) and the rows of each key's table.
  2. Plain lookups: each lookup's id tensor as it enters the peer exchange, and its rows.
  3. Dense inputs: placeholders that feed no lookup (for the batch-size check), with their
     per-sample shape in example_inputs when given (a wrong width is refused up front).
  4. One impure `call_module` node right after the last of those inputs checks them all.
  5. A KJT whose every lookup is a TorchRec EmbeddingBagCollection of plain nn.EmbeddingBag
     modules leaves its id ranges to those lookups (torch's CPU kernel refuses a bad id) when
     the model runs under LookupGuard, installed here: their errors become the same
     InputValidationError (compiler/validation.py's module doc).
Preserves numerics: it reads the inputs and returns nothing.
"""

from __future__ import annotations

import operator
from typing import Any, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
from torchrec import EmbeddingBagCollection

from dmt_fx.compiler.validation import InputValidator, install_lookup_guard
from dmt_fx.ir import ops
from dmt_fx.ir.graph import tag
from dmt_fx.ir.names import Role
from dmt_fx.ir.sites import TORCHREC_KINDS, ModelSites

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


def _lookups_check_ids(gm: fx.GraphModule, kjts: list[fx.Node]) -> list[bool]:
    """Step 5: per KJT, whether every lookup that reads it refuses a bad id on the CPU."""
    readers: dict[fx.Node, list[fx.Node]] = {kjt: [] for kjt in kjts}
    selected = {n.name: n.args[0] for n in gm.graph.nodes if _role(n) == "select_features"}
    for node in gm.graph.nodes:
        if _role(node) == "tower_lookup" and node.args and isinstance(node.args[0], fx.Node):
            source = _selected_by(node.args[0], selected)
            if source in readers:
                readers[source].append(node)
    return [bool(readers[kjt]) and all(_checks_ids(gm, n) for n in readers[kjt])
            and all(_role(u) in ("select_features", "validate_inputs") for u in kjt.users) for kjt in kjts]


def _selected_by(node: fx.Node, selected: dict[str, fx.Node]) -> fx.Node | None:
    """The KJT a tower lookup's ids were selected from (through the identity exchange)."""
    if node.target is operator.getitem and node.args[0].target is ops.peer_input_exchange:
        node = node.args[0].args[0][node.args[1]]
    return selected.get(node.name)


def _checks_ids(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op != "call_module":
        return False
    module = gm.get_submodule(node.target)
    return type(module) is EmbeddingBagCollection and all(type(b) is nn.EmbeddingBag
                                                          for b in module.embedding_bags.values())


def _plain(gm: fx.GraphModule, sites: ModelSites) -> tuple[list, list[fx.Node]]:
    """Step 2: ids of plain lookups, traced back through the exchange to where they enter it."""
    site_of = {s.node: s for s in sites.sites}
    specs, nodes = [], []
    for node in gm.graph.nodes:
        if _role(node) != "tower_lookup" or site_of[node.meta["dmt"]["origin"]].kind in TORCHREC_KINDS:
            continue
        ids = node.args[1] if node.op == "call_function" else (node.args[0] if node.args else node.kwargs["input"])
        if _role(ids) == Role.FIELD_ROWS:  # a sparse-gradient field: its local ids plus its row offset
            ids = ids.args[0]
        if ids.target is operator.getitem and ids.args[0].target is ops.peer_input_exchange:
            ids = ids.args[0].args[0][ids.args[1]]
        # a joint table's field lookups name their feature (each its own row range)
        feature = sites.feature(node.meta["dmt"].get("features", site_of[node.meta["dmt"]["origin"]].features)[0])
        specs.append((ids.name, feature.name, sites.table(feature.table).num_embeddings))
        nodes.append(ids)
    return specs, nodes


def _dense_shapes(gm: fx.GraphModule, dense: list[fx.Node], example_inputs: Sequence[Any] | None) -> list:
    """Step 3: each dense input's shape after the batch dimension in example_inputs (None where
    the placeholders are not forward()'s arguments one to one, or the input is no tensor)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if example_inputs is None or len(placeholders) != len(example_inputs):
        return [None] * len(dense)
    value = dict(zip(placeholders, example_inputs))
    return [tuple(value[n].shape[1:]) if isinstance(value[n], torch.Tensor) and value[n].dim() > 0 else None
            for n in dense]


def validate_inputs_pass(gm: fx.GraphModule, *, sites: ModelSites,
                         example_inputs: Sequence[Any] | None = None) -> fx.GraphModule:
    sparse_specs, sparse_nodes = _sparse(gm, sites)
    plain_specs, plain_nodes = _plain(gm, sites)
    dense = [n for n in gm.graph.nodes if n.op == "placeholder" and n.name in set(sites.dense_inputs)]  # Step 3
    inputs = sparse_nodes + plain_nodes + dense
    if not inputs:
        return gm
    later = _lookups_check_ids(gm, sparse_nodes)
    gm.add_submodule(PATH, InputValidator(sparse_specs, plain_specs, [n.name for n in dense], later,
                                          _dense_shapes(gm, dense, example_inputs)))
    if any(later):  # Step 5
        install_lookup_guard(gm, PATH)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    with gm.graph.inserting_after(max(inputs, key=order.__getitem__)):  # Step 4
        tag(gm.graph.call_module(PATH, tuple(inputs)), PASS, "validate_inputs")
    return gm
