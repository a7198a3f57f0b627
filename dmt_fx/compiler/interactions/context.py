"""What an interaction rewriter gets: the graph, the interaction node, the towers' outputs,
and helpers that rewire inputs and rebuild the first dense layer after the interaction.

Shared by the built-in kinds (one file each in this package), user kinds and the
interaction pass, which builds the context; kept apart from the pass so kind files never
import a pass.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn

from dmt_fx._compat import pytree
from dmt_fx.compiler.tower_modules.base import TowerSpec
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.graph import tag
from dmt_fx.ir.names import Role

PASS = "interaction"  # the pass named in the provenance of the nodes a rewriter inserts
LINEAR_FUNCTIONS = {torch.ops.aten.linear.default, torch.nn.functional.linear}


def stack_towers(outputs: tuple[torch.Tensor, ...], dim: int) -> torch.Tensor:
    """(B, K, D): the towers' outputs as K vectors of width D."""
    return torch.cat([o.reshape(o.shape[0], -1, dim) for o in outputs], dim=1)


@dataclasses.dataclass
class InteractionContext:
    gm: fx.GraphModule
    node: fx.Node  # the interaction site
    towers: list[fx.Node]  # each tower's output, (B, out_width), in tower order
    specs: list[TowerSpec]
    derived: set[fx.Node]  # nodes computed from the old per-feature embeddings
    example_inputs: tuple
    route: str  # "symbolic" | "export": how the graph's inputs are laid out
    num_features: int = 0  # F, the model's features before the rewrite

    @property
    def num_vectors(self) -> int:
        return sum(s.out_width // (s.vector_dim or s.out_width) for s in self.specs)

    @property
    def vector_dim(self) -> int:
        dims = {s.vector_dim for s in self.specs}
        assert len(dims) == 1 and None not in dims, f"vector dims {dims}"
        return dims.pop()

    def insert(self, target: Callable, args: tuple, role: str, before: fx.Node | None = None) -> fx.Node:
        """A call_function node before `before` (default: the interaction), tagged by the pass."""
        with self.gm.graph.inserting_before(before or self.node):
            return tag(self.gm.graph.call_function(target, args), PASS, role)

    def stacked(self) -> fx.Node:
        return self.insert(stack_towers, (tuple(self.towers), self.vector_dim), "stack_towers")

    def flat(self) -> fx.Node:
        return self.insert(torch.cat, (list(self.towers), 1), "concat_towers")

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
        """Rebuild the first linear layer after `after` (default: the interaction) for its new
        input width, measured by running the graph up to it on the example inputs.

        with_towers=True also feeds it the towers' outputs themselves, concatenated after its
        old input: for interactions that pass on only products of their inputs (dot kinds),
        whose over-arch would otherwise see a tower's within-tower interactions only through
        products of products."""
        linear = first_linear(after or self.node)
        if linear is None:
            raise DMTError("no linear layer after the interaction", "an over-arch starting with a linear layer",
                           ["register your interaction with a rewriter that rebuilds its consumer"])
        if with_towers:
            flat = self.insert(torch.cat, (list(self.towers), 1), "concat_towers", before=linear)
            joined = self.insert(torch.cat, ([linear.args[0], flat], 1), "over_arch_input", before=linear)
            linear.update_arg(0, joined)
        remove_dead_code(self.gm)
        resize_linear(self.gm, linear, input_width(self.gm, linear, self.example_inputs, self.route))


def derived_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Every node computed from the per-feature embeddings the towers send back."""
    frontier = [n for n in gm.graph.nodes if n.meta.get("dmt", {}).get("role") == Role.RECEIVED_EMBEDDINGS]
    seen: set[fx.Node] = set()
    while frontier:
        node = frontier.pop()
        if node not in seen:
            seen.add(node)
            frontier += list(node.users)
    return seen


def first_linear(start: fx.Node) -> fx.Node | None:
    """The first linear layer (module or function) downstream of `start`, in graph order."""
    order = {n: i for i, n in enumerate(start.graph.nodes)}
    frontier, seen = list(start.users), set()
    while frontier:
        node = min(frontier, key=order.__getitem__)
        frontier.remove(node)
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_function" and node.target in LINEAR_FUNCTIONS:
            return node
        if node.op == "call_module" and isinstance(node.graph.owning_module.get_submodule(node.target), nn.Linear):
            return node
        frontier += list(node.users)
    return None


class _Reached(Exception):
    def __init__(self, width: int) -> None:
        self.width = width


class _WidthProbe(fx.Interpreter):
    """Runs the graph until `target`, then reports the width of its first input."""

    def __init__(self, gm: fx.GraphModule, target: fx.Node) -> None:
        super().__init__(gm)
        self.target = target

    def run_node(self, n: fx.Node) -> Any:
        if n is self.target:
            raise _Reached(self.env[n.args[0]].shape[-1])
        return super().run_node(n)


def input_width(gm: fx.GraphModule, linear: fx.Node, example_inputs: tuple, route: str) -> int:
    """The width of `linear`'s input on the example inputs (exported graphs take flat leaves)."""
    args = pytree.tree_leaves(example_inputs) if route == "export" else list(example_inputs)
    try:
        with torch.no_grad():
            _WidthProbe(gm, linear).run(*args)
    except _Reached as reached:
        return int(reached.width)
    raise AssertionError("the probe never reached the linear layer")


def resize_linear(gm: fx.GraphModule, node: fx.Node, width: int) -> None:
    """Replace the linear layer of `node` by a fresh one (torch's defaults) reading `width`."""
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


def remove_dead_code(gm: fx.GraphModule) -> None:
    gm.graph.eliminate_dead_code()
    gm.recompile()
