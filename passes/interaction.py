"""Interaction rewrite: the global interaction consumes the towers' compressed outputs.

Opt-in (it changes the model); runs after compressing tower modules. The kinds it knows are
the registry `dmt_fx.compiler.interactions.INTERACTIONS` (built-ins one file each there,
user kinds through `dmt_fx.register_interaction`); this pass only drives them.
Algorithm:
  1. Each tower's output: item 0 of its peer_output_exchange, shape (B, out_width).
  2. Look up the interaction kind's rewriter in the registry and let it rewire the
     interaction's embedding input to the towers' outputs, rebuilding the interaction module
     for K = sum of the towers' vectors (or the new width) and the first dense layer after it
     (`InteractionContext.rebuild_next_linear`: measured on the example inputs; for the dot
     kinds that layer also reads the towers' outputs themselves, since a tower module has
     already computed its tower's interactions and a dot interaction alone would hand them on
     only as products with other vectors).
  3. Remove the dead per-feature path (merges, to_dict, cat, ...); refuse the rewrite if
     embeddings are still used elsewhere (they no longer exist per feature).
"""

from __future__ import annotations

import logging
import operator

import torch.fx as fx

from dmt_fx.compiler.interactions import InteractionContext, interaction_kind
from dmt_fx.compiler.interactions.context import PASS, derived_nodes, remove_dead_code
from dmt_fx.compiler.tower_modules import TowerSpec
from dmt_fx.ir import ops
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.graph import tag
from dmt_fx.ir.names import Role
from dmt_fx.ir.sites import ModelSites

log = logging.getLogger(__name__)


def _tower_outputs(gm: fx.GraphModule) -> list[fx.Node]:
    outputs = []
    for exchange in [n for n in gm.graph.nodes if n.target is ops.peer_output_exchange]:
        with gm.graph.inserting_after(exchange):
            out = gm.graph.call_function(operator.getitem, (exchange, 0))
        outputs.append(tag(out, PASS, Role.TOWER_OUTPUT, tower=exchange.kwargs["tower"],
                           host=exchange.kwargs["host"]))
    return outputs


def _refuse_other_uses(gm: fx.GraphModule) -> None:
    stale = [n.name for n in gm.graph.nodes if n.meta.get("dmt", {}).get("role") in (Role.MERGE,
                                                                                     Role.RECEIVED_EMBEDDINGS)]
    if stale:
        raise DMTError(f"embeddings used outside the interaction (still read by {stale[:3]} ...)",
                       "every use of the pooled embeddings to go through the interaction",
                       ["use tower_module='identity' for this model",
                        "or register an interaction kind whose rewriter handles the other uses"])


def interaction_pass(gm: fx.GraphModule, *, sites: ModelSites, specs: list[TowerSpec],
                     example_inputs: tuple) -> fx.GraphModule:
    kind = interaction_kind(sites.interaction.kind)  # an unknown kind says how to register it
    # Step 1
    node = next(n for n in gm.graph.nodes if n.name == sites.interaction.node)
    towers = _tower_outputs(gm)
    # Step 2
    ctx = InteractionContext(gm, node, towers, specs, derived_nodes(gm), example_inputs, sites.route,
                             num_features=len(sites.features))
    kind.rewriter(ctx)
    # Step 3
    remove_dead_code(gm)
    _refuse_other_uses(gm)
    log.info("interaction: %s now reads %d tower outputs (%d columns)", kind.name, len(towers),
             sum(s.out_width for s in specs))
    return gm
