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
  4. Run the rewritten graph once on the example inputs: a layer between the interaction and
     the rebuilt one that was built for the old width (a BatchNorm over the concatenation, a
     second projection, a reshape into per-feature vectors) fails there; the refusal names that
     layer and why instead of handing the user a shape error from inside torch.
"""

from __future__ import annotations

import logging
import operator
from typing import Any

import torch
import torch.fx as fx

from dmt_fx._compat import pytree
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
    try:
        kind.rewriter(ctx)
    except DMTError:
        raise
    except Exception as exc:  # the rewriter's own probe ran into a layer it did not rebuild
        _refuse_unrebuilt_layer(gm, kind.name, specs, example_inputs, sites.route, exc)
    # Step 3
    remove_dead_code(gm)
    _refuse_other_uses(gm)
    # Step 4
    _refuse_unrebuilt_layer(gm, kind.name, specs, example_inputs, sites.route)
    log.info("interaction: %s now reads %d tower outputs (%d columns)", kind.name, len(towers),
             sum(s.out_width for s in specs))
    return gm


class _Tracking(fx.Interpreter):
    """Runs the graph, remembering the node being run (the one that fails)."""

    current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        return super().run_node(n)


def _refuse_unrebuilt_layer(gm: fx.GraphModule, kind: str, specs: list[TowerSpec], example_inputs: tuple,
                            route: str, error: Exception | None = None) -> None:
    """Step 4: the rewritten graph runs on the example inputs, or a DMTError names the layer."""
    args = pytree.tree_leaves(example_inputs) if route == "export" else list(example_inputs)
    probe = _Tracking(gm)
    try:
        with torch.no_grad():
            probe.run(*args)
    except Exception as exc:  # noqa: BLE001 - any failure here is a layer built for the old width
        error = exc
    if error is None:
        return
    width = sum(s.out_width for s in specs)
    if probe.current is not None and str(probe.current.target).startswith("dmt_tower_modules"):
        raise DMTError(f"tower module '{probe.current.target}' cannot read its tower's embeddings as the model "
                       f"hands them over ({str(error).strip().splitlines()[0][:200]})",
                       "each tower's pooled embeddings as one (batch, sum of the tower's dims) input",
                       ["keep tower_module='identity' (the default)",
                        "please report this with the model: the tower module pass should have refused it"]) from error
    where = _layer_name(gm, probe.current) if probe.current is not None else "a layer after the interaction"
    reason = str(error).strip().splitlines()[0][:200]
    raise DMTError(
        f"the {kind!r} interaction rebuilt for the towers' compressed outputs ({width} columns), but {where} "
        f"after it was built for the uncompressed embeddings and fails on the new width ({reason})",
        "the layers between the interaction and the first linear layer after it to not depend on the "
        "embeddings' width (the rewrite rebuilds only that linear layer)",
        ["keep tower_module='identity' (the default): exact, no compression",
         "or register an interaction kind (dmt_fx.register_interaction) whose rewriter rebuilds those layers"],
    ) from error


def _layer_name(gm: fx.GraphModule, node: fx.Node) -> str:
    """The user's name of the layer a node belongs to (module path and type where known)."""
    if node.op == "call_module":
        return f"layer '{node.target}' ({type(gm.get_submodule(node.target)).__name__})"
    stack = node.meta.get("nn_module_stack")
    if stack:
        path, owner = list(stack.values())[-1]
        owner_name = getattr(owner, "__name__", str(owner).rsplit(".", 1)[-1])
        return f"layer '{path}' ({owner_name}, node {node.name})"
    return f"node {node.name} ({getattr(node.target, '__name__', node.target)})"
