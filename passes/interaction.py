"""Interaction rewrite: the global interaction consumes the towers' compressed outputs.

Opt-in (it changes the model); runs after compressing tower modules.
Algorithm:
  1. Each tower's output: item 0 of its peer_output_exchange, shape (B, out_width).
  2. Look up the interaction kind's rewriter (user registry first, then built-ins) and let
     it rewire the interaction's embedding input to the towers' outputs, rebuilding the
     interaction module for K = sum of the towers' vectors (or the new width).
  3. Remove the dead per-feature path (merges, to_dict, cat, ...); refuse the rewrite if
     embeddings are still used elsewhere (they no longer exist per feature).
  4. Rebuild the first dense layer after the interaction for its new input width (measured
     by running the graph up to it on the example inputs). For the dot kinds (InteractionArch,
     InteractionProjectionArch, pairwise_dot) that layer also reads the towers' outputs
     themselves: a tower module has already computed its tower's interactions (e.g. the
     within-tower dot products), and a dot interaction alone would hand them on only as
     products with other vectors, i.e. as third- and fourth-order terms.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import operator
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils import _pytree as pytree
from torchrec.models.dlrm import InteractionArch, InteractionDCNArch, InteractionProjectionArch
from torchrec.modules.crossnet import LowRankCrossNet

from dmt_fx.compiler.interactions import USER_KINDS, Rewriter
from dmt_fx.compiler.tower_module import TowerSpec
from dmt_fx.ir import ops
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.graph import tag
from dmt_fx.ir.sites import ModelSites

log = logging.getLogger(__name__)
PASS = "interaction"
_LINEARS = {torch.ops.aten.linear.default, torch.nn.functional.linear}


def stack_towers(outputs: tuple[torch.Tensor, ...], dim: int) -> torch.Tensor:
    """(B, K, D): the towers' outputs as K vectors of width D."""
    return torch.cat([o.reshape(o.shape[0], -1, dim) for o in outputs], dim=1)


def pairs_below_diagonal(z: torch.Tensor, offset: int) -> torch.Tensor:
    """z[:, i, j] for j < i + offset: the reference DLRM's li/lj, sized from z."""
    n = z.shape[1]
    rows, cols = torch.tril_indices(n, n, offset=offset - 1, device=z.device)
    return z[:, rows, cols]


@dataclasses.dataclass
class InteractionContext:
    gm: fx.GraphModule
    node: fx.Node
    towers: list[fx.Node]
    specs: list[TowerSpec]
    derived: set[fx.Node]  # nodes computed from the old per-feature embeddings
    example_inputs: tuple
    route: str

    @property
    def num_vectors(self) -> int:
        return sum(s.out_width // (s.vector_dim or s.out_width) for s in self.specs)

    @property
    def vector_dim(self) -> int:
        dims = {s.vector_dim for s in self.specs}
        assert len(dims) == 1 and None not in dims, f"vector dims {dims}"
        return dims.pop()

    def _insert(self, target: Callable, args: tuple, role: str) -> fx.Node:
        with self.gm.graph.inserting_before(self.node):
            return tag(self.gm.graph.call_function(target, args), PASS, role)

    def stacked(self) -> fx.Node:
        return self._insert(stack_towers, (tuple(self.towers), self.vector_dim), "stack_towers")

    def flat(self) -> fx.Node:
        return self._insert(torch.cat, (list(self.towers), 1), "concat_towers")

    def replace_embedding_items(self, items: list) -> list:
        """A list argument with its embedding-derived entries replaced by the towers' outputs."""
        out, placed = [], False
        for item in items:
            if isinstance(item, fx.Node) and item in self.derived:
                if not placed:
                    out += self.towers
                    placed = True
            else:
                out.append(item)
        return out

    def rebuild_next_linear(self, after: fx.Node | None = None, *, with_towers: bool = False) -> None:
        """Step 4: the first linear layer after `after` (default: the interaction).

        with_towers=True also feeds it the towers' outputs themselves, concatenated after its
        old input: for interactions that pass on only products of their inputs (dot kinds),
        whose over-arch would otherwise see a tower's within-tower interactions only through
        products of products."""
        linear = _first_linear(after or self.node)
        if linear is None:
            raise DMTError("no linear layer after the interaction", "an over-arch starting with a linear layer",
                           ["register your interaction with a rewriter that rebuilds its consumer"])
        if with_towers:
            with self.gm.graph.inserting_before(linear):
                flat = tag(self.gm.graph.call_function(torch.cat, (list(self.towers), 1)), PASS, "concat_towers")
                joined = tag(self.gm.graph.call_function(torch.cat, ([linear.args[0], flat], 1)), PASS,
                             "over_arch_input")
            linear.update_arg(0, joined)
        _cleanup(self.gm)
        width = _input_width(self.gm, linear, self.example_inputs, self.route)
        _resize_linear(self.gm, linear, width)


def _first_linear(start: fx.Node) -> fx.Node | None:
    frontier, seen = list(start.users), set()
    while frontier:
        node = min(frontier, key=lambda n: list(n.graph.nodes).index(n))
        frontier.remove(node)
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_function" and node.target in _LINEARS:
            return node
        if node.op == "call_module" and isinstance(node.graph.owning_module.get_submodule(node.target), nn.Linear):
            return node
        frontier += list(node.users)
    return None


class _Stop(Exception):
    def __init__(self, width: int) -> None:
        self.width = width


class _WidthProbe(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, target: fx.Node) -> None:
        super().__init__(gm)
        self.target = target

    def run_node(self, n: fx.Node) -> Any:
        if n is self.target:
            raise _Stop(self.env[n.args[0]].shape[-1])
        return super().run_node(n)


def _input_width(gm: fx.GraphModule, linear: fx.Node, example_inputs: tuple, route: str) -> int:
    args = pytree.tree_leaves(example_inputs) if route == "export" else list(example_inputs)
    try:
        with torch.no_grad():
            _WidthProbe(gm, linear).run(*args)
    except _Stop as stop:
        return int(stop.width)
    raise AssertionError("the probe never reached the linear layer")


def _resize_linear(gm: fx.GraphModule, node: fx.Node, width: int) -> None:
    if node.op == "call_module":
        old = gm.get_submodule(node.target)
        owner, _, name = node.target.rpartition(".")
        setattr(gm.get_submodule(owner), name, nn.Linear(width, old.out_features, bias=old.bias is not None))
        return
    weight = node.args[1]
    fresh = nn.Linear(width, gm.get_parameter(weight.target).shape[0])
    for attr, value in ((weight, fresh.weight), (node.args[2] if len(node.args) > 2 else None, fresh.bias)):
        if isinstance(attr, fx.Node):
            owner, _, name = attr.target.rpartition(".")
            setattr(gm.get_submodule(owner), name, value)


def _cleanup(gm: fx.GraphModule) -> None:
    gm.graph.eliminate_dead_code()
    gm.recompile()


# ---------------------------------------------------------------- built-in rewriters


def _sparse_arg(ctx: InteractionContext, value: fx.Node) -> None:
    if "sparse_features" in ctx.node.kwargs:
        ctx.node.update_kwarg("sparse_features", value)
    else:
        ctx.node.update_arg(1, value)


def _first_linear_of(module: nn.Module) -> tuple[nn.Module, str]:
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear):
            owner, _, leaf = name.rpartition(".")
            return module.get_submodule(owner), leaf
    raise DMTError(f"{type(module).__name__} without a linear layer", "an MLP branch", [])


def _rewrite_torchrec(ctx: InteractionContext) -> None:
    old = ctx.gm.get_submodule(ctx.node.target)
    k, d = ctx.num_vectors, ctx.vector_dim
    if isinstance(old, InteractionDCNArch):
        net = old.crossnet
        new = InteractionDCNArch(k, LowRankCrossNet((k + 1) * d, net._num_layers, net._low_rank))
    elif isinstance(old, InteractionProjectionArch):
        # Copies: the leaf modules of the GraphModule are the user's own objects.
        branches = [copy.deepcopy(old.interaction_branch1), copy.deepcopy(old.interaction_branch2)]
        for branch in branches:
            owner, leaf = _first_linear_of(branch)
            first = getattr(owner, leaf)
            setattr(owner, leaf, nn.Linear((k + 1) * d, first.out_features, bias=first.bias is not None))
        new = InteractionProjectionArch(k, *branches)
    else:
        new = InteractionArch(k)
    owner, _, name = ctx.node.target.rpartition(".")
    setattr(ctx.gm.get_submodule(owner) if owner else ctx.gm, name, new)
    _sparse_arg(ctx, ctx.stacked())
    # DCN's cross layers keep their input (x_{l+1} = x0 * (W x_l + b) + x_l): the towers'
    # outputs reach the over-arch already; dot and projection interactions need them added.
    ctx.rebuild_next_linear(with_towers=not isinstance(old, InteractionDCNArch))


def _rewrite_concat(ctx: InteractionContext) -> None:
    ctx.node.update_arg(0, ctx.replace_embedding_items(list(ctx.node.args[0])))
    ctx.rebuild_next_linear()


def _rewrite_pairwise_dot(ctx: InteractionContext) -> None:
    """The reference DLRM: cat([x] + ly).view(B, -1, d); bmm; Z[:, li, lj] with li/lj built
    for F + 1 vectors in forward (constants after capture): recomputed for K + 1."""
    _rewrite_concat_items_only(ctx)
    index = _constant_index_after(ctx.node)
    if index is not None:
        z, n_pairs = index.args[0], _constant_length(ctx.gm, index)
        f1 = len(ctx.gm.meta.get("dmt_sites_features", ())) + 1
        offset = 1 if n_pairs == f1 * (f1 + 1) // 2 else 0
        with ctx.gm.graph.inserting_before(index):
            pairs = tag(ctx.gm.graph.call_function(pairs_below_diagonal, (z, offset)), PASS, "pairs")
        index.replace_all_uses_with(pairs)
        ctx.rebuild_next_linear(pairs, with_towers=True)
    else:
        ctx.rebuild_next_linear(with_towers=True)


def _rewrite_concat_items_only(ctx: InteractionContext) -> None:
    ctx.node.update_arg(0, ctx.replace_embedding_items(list(ctx.node.args[0])))


def _constant_index_after(node: fx.Node) -> fx.Node | None:
    frontier = list(node.users)
    for _ in range(6):
        for n in frontier:
            if n.target in (torch.ops.aten.index.Tensor, operator.getitem) and n.op == "call_function":
                indices = n.args[1]
                if isinstance(indices, (list, tuple)) and any(isinstance(i, fx.Node) for i in indices):
                    return n
        frontier = [u for n in frontier for u in n.users]
    return None


def _constant_length(gm: fx.GraphModule, index: fx.Node) -> int:
    node = next(i for i in index.args[1] if isinstance(i, fx.Node))
    while node.op != "get_attr":
        node = node.args[0]
    return int(getattr(gm, node.target).numel()) if "." not in node.target else int(gm.get_buffer(node.target).numel())


BUILTIN: dict[str, tuple[Rewriter, bool]] = {
    "torchrec.InteractionArch": (_rewrite_torchrec, True),
    "torchrec.InteractionDCNArch": (_rewrite_torchrec, True),
    "torchrec.InteractionProjectionArch": (_rewrite_torchrec, True),
    "pairwise_dot": (_rewrite_pairwise_dot, True),
    "concat": (_rewrite_concat, False),
}


def needs_vectors(kind: str) -> bool:
    """Whether the kind consumes D-wide vectors (tower outputs must be whole vectors)."""
    if kind in USER_KINDS:
        return USER_KINDS[kind][2]
    if kind in BUILTIN:
        return BUILTIN[kind][1]
    raise DMTError(f"an interaction of kind {kind!r}",
                   f"one of {sorted(BUILTIN)} or a kind registered with dmt_fx.register_interaction",
                   ["register it: dmt_fx.register_interaction(kind, matcher, rewriter)",
                    "or keep tower_module='identity', which needs no interaction rewrite"])


def _derived(gm: fx.GraphModule) -> set[fx.Node]:
    frontier = [n for n in gm.graph.nodes if n.meta.get("dmt", {}).get("role") == "received_embeddings"]
    seen: set[fx.Node] = set()
    while frontier:
        node = frontier.pop()
        if node not in seen:
            seen.add(node)
            frontier += list(node.users)
    return seen


def interaction_pass(gm: fx.GraphModule, *, sites: ModelSites, specs: list[TowerSpec],
                     example_inputs: tuple) -> fx.GraphModule:
    # Step 1
    nodes = {n.name: n for n in gm.graph.nodes}
    exchanges = [n for n in gm.graph.nodes if n.target is ops.peer_output_exchange]
    towers = []
    for exchange in exchanges:
        with gm.graph.inserting_after(exchange):
            out = gm.graph.call_function(operator.getitem, (exchange, 0))
        towers.append(tag(out, PASS, "tower_output", tower=exchange.kwargs["tower"], host=exchange.kwargs["host"]))
    derived = _derived(gm)
    # Step 2
    kind = sites.interaction.kind
    needs_vectors(kind)
    rewrite = USER_KINDS[kind][1] if kind in USER_KINDS else BUILTIN[kind][0]
    gm.meta["dmt_sites_features"] = tuple(f.name for f in sites.features)
    ctx = InteractionContext(gm, nodes[sites.interaction.node], towers, specs, derived, example_inputs, sites.route)
    rewrite(ctx)
    gm.meta.pop("dmt_sites_features", None)
    # Step 3
    _cleanup(gm)
    stale = [n.name for n in gm.graph.nodes if n.meta.get("dmt", {}).get("role") in ("merge", "received_embeddings")]
    if stale:
        raise DMTError(f"embeddings used outside the interaction (still read by {stale[:3]} ...)",
                       "every use of the pooled embeddings to go through the interaction",
                       ["use tower_module='identity' for this model",
                        "or register an interaction kind whose rewriter handles the other uses"])
    log.info("interaction: %s now reads %d tower outputs (%d vectors)", kind, len(towers),
             sum(s.out_width for s in specs))
    return gm
