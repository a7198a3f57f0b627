"""Sequence tower modules (`seq_mean`, `seq_attention`): each tower reduces its sequence
features before the peer exchange, and the model reads the reduced vectors.

Opt-in (it changes the model); runs instead of the tower_modules and interaction passes.
Algorithm:
  1. Per tower, each EmbeddingCollection lookup (its Dict[str, JaggedTensor]) goes through
     the tower's module (`dmt_tower_modules.tower_<t>`, called with the keys it holds), which
     returns a KeyedTensor of (B, ceil(d / c)) per feature: the peer exchange sends that.
  2. Per collection, the merge of the towers' parts becomes a KeyedTensor merge.
  3. Per sequence feature, the model's own reduction node (`dmt_fx.compiler.sequence_reductions`:
     the one (B, d) node every use of the rows goes through) is replaced by the feature's
     reduced column: as it is at c = 1, through a learned nn.Linear(ceil(d / c), d) at c > 1
     (`dmt_sequence_expand.<i>`, a dense layer of the model, replicated like the over-arch),
     so the layers after the reduction read the (B, d) they were built for.
  4. The model's nodes between the read and the reduction are dead: removed; a read of the
     rows left anywhere else refuses the rewrite (the rows no longer exist).
"""

from __future__ import annotations

import logging
from typing import Mapping

import torch
import torch.fx as fx
import torch.nn as nn
from torchrec.sparse.jagged_tensor import KeyedTensor

from dmt_fx.compiler.sequence_reductions import SequenceReduction
from dmt_fx.compiler.tower_modules import TowerModuleKind, TowerSpec
from dmt_fx.compiler.tower_modules.sequence import reduced_width
from dmt_fx.ir import ops
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.graph import stable_toposort, tag
from dmt_fx.ir.names import Role, nodes_with_role, role_of, tower_module_path
from dmt_fx.ir.plan import TowerPlan
from dmt_fx.ir.sites import SEQUENCE_KIND, ModelSites

log = logging.getLogger(__name__)
PASS = "sequence_towers"
EXPAND_ATTR = "dmt_sequence_expand"


def reduced_column(reduced: KeyedTensor, key: str) -> torch.Tensor:
    """One sequence feature's reduced (B, w) column of its collection's KeyedTensor."""
    return reduced[key]


def sequence_towers_pass(gm: fx.GraphModule, *, sites: ModelSites, plan: TowerPlan, kind: TowerModuleKind,
                         specs: list[TowerSpec], reductions: Mapping[str, SequenceReduction]) -> fx.GraphModule:
    graph = gm.graph
    sequence_sites = {s.node for s in sites.sites if s.kind == SEQUENCE_KIND}
    built: set[int] = set()
    # Step 1
    for exchange in list(nodes_with_role(graph, Role.PEER_OUTPUT_EXCHANGE)):
        tower = exchange.kwargs["tower"]
        outs = list(exchange.args[0])
        for i, out in enumerate(outs):
            if out.meta.get("dmt", {}).get("origin") not in sequence_sites:
                continue
            path = tower_module_path(tower)
            if tower not in built:
                gm.add_submodule(path, kind.build(specs[tower]))
                built.add(tower)
            with graph.inserting_before(exchange):
                outs[i] = tag(graph.call_module(path, (out,), {"keys": tuple(out.meta["dmt"]["features"])}),
                              PASS, Role.TOWER_MODULE, tower=tower, host=exchange.kwargs["host"],
                              features=tuple(out.meta["dmt"]["features"]))
        exchange.args = (tuple(outs),)
    # Steps 2-3
    dims = {f.name: f.dim for f in sites.features}
    widths = {f: reduced_width(d, s.compression) for s in specs for f, d in zip(s.features, s.dims)}
    nodes = {n.name: n for n in graph.nodes}
    expanded = 0
    for site in sites.sites:
        if site.node not in sequence_sites:
            continue
        old = next(nodes_with_role(graph, Role.MERGE, origin=site.node))
        with graph.inserting_after(old):
            merged = tag(graph.call_function(ops.merge_keyed_tensors, old.args), PASS, Role.MERGE, origin=site.node)
        old.meta["dmt"]["role"] = "sequence_rows"  # no longer the site's merge (removed in step 4)
        for feature in site.features:
            reduction = nodes[reductions[feature].node]
            with graph.inserting_before(reduction):
                column = graph.call_function(reduced_column, (merged, sites.feature(feature).key))
                if widths[feature] != dims[feature]:
                    gm.add_submodule(f"{EXPAND_ATTR}.{expanded}", nn.Linear(widths[feature], dims[feature]))
                    column = graph.call_module(f"{EXPAND_ATTR}.{expanded}", (column,))
                    expanded += 1
            reduction.replace_all_uses_with(column)
    # Step 4
    stable_toposort(graph)
    graph.eliminate_dead_code()
    stale = [n.name for n in graph.nodes if role_of(n) == "sequence_rows"]
    if stale:
        raise DMTError(f"sequence rows still read after their reductions were replaced (node {stale[0]!r})",
                       "every use of a sequence feature's rows to go through its one (B, D) reduction",
                       ["keep tower_module='identity' (the default) for this model"])
    gm.recompile()
    log.info("sequence_towers: %d sequence features reduced in their towers (%d expanded back)",
             len(reductions), expanded)
    return gm
