"""Interaction kind "pairwise_dot": the reference DLRM's dot interaction, matched by its graph
pattern: a batched matmul, or a concatenation feeding a batched matmul of itself
(cat([x] + ly).view(B, -1, d); bmm(T, T^T); Z[:, li, lj]).

The rewrite concatenates the towers' outputs in place of the embeddings; the index lists li/lj,
built in forward for F + 1 vectors (constants after capture), are recomputed from Z's size
for K + 1, keeping the model's choice of diagonal."""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from dmt_fx.compiler.interactions.base import function_name, register_interaction
from dmt_fx.compiler.interactions.context import InteractionContext

MATMULS = ("bmm", "matmul")
HOPS = 4  # how far a concatenation may be from its batched matmul (view, transpose, ...)


def pairs_below_diagonal(z: torch.Tensor, offset: int) -> torch.Tensor:
    """z[:, i, j] for j < i + offset: the reference DLRM's li/lj, sized from z."""
    n = z.shape[1]
    rows, cols = torch.tril_indices(n, n, offset=offset - 1, device=z.device)
    return z[:, rows, cols]


def feeds_matmul(node: fx.Node) -> bool:
    frontier = list(node.users)
    for _ in range(HOPS):
        if any(any(m in (function_name(u) or "") for m in MATMULS) for u in frontier):
            return True
        frontier = [v for u in frontier for v in u.users]
    return False


def is_concatenation(node: fx.Node) -> bool:
    name = function_name(node)
    return name is not None and (name.startswith("cat") or name == "concat")


def is_pairwise_dot(gm: fx.GraphModule, node: fx.Node) -> bool:
    name = function_name(node) or ""
    return any(m in name for m in MATMULS) or (is_concatenation(node) and feeds_matmul(node))


def _constant_index_after(node: fx.Node) -> fx.Node | None:
    """The Z[:, li, lj] node: an index by tensors within a few hops after the interaction."""
    frontier = list(node.users)
    for _ in range(6):
        for n in frontier:
            if n.op == "call_function" and n.target in (torch.ops.aten.index.Tensor, operator.getitem):
                indices = n.args[1]
                if isinstance(indices, (list, tuple)) and any(isinstance(i, fx.Node) for i in indices):
                    return n
        frontier = [u for n in frontier for u in n.users]
    return None


def _constant_length(gm: fx.GraphModule, index: fx.Node) -> int:
    """How many pairs the captured index lists select (their constant's length)."""
    node = next(i for i in index.args[1] if isinstance(i, fx.Node))
    while node.op != "get_attr":
        node = node.args[0]
    return int(getattr(gm, node.target).numel()) if "." not in node.target else int(gm.get_buffer(node.target).numel())


def rewrite_pairwise_dot(ctx: InteractionContext) -> None:
    ctx.node.update_arg(0, ctx.replace_embedding_items(list(ctx.node.args[0])))
    index = _constant_index_after(ctx.node)
    if index is None:
        ctx.rebuild_next_linear(with_towers=True)
        return
    f1 = ctx.num_features + 1
    offset = 1 if _constant_length(ctx.gm, index) == f1 * (f1 + 1) // 2 else 0  # the diagonal kept or not
    pairs = ctx.insert(pairs_below_diagonal, (index.args[0], offset), "pairs", before=index)
    index.replace_all_uses_with(pairs)
    # A dot interaction passes the towers' own outputs on only as products: add them.
    ctx.rebuild_next_linear(pairs, with_towers=True)


register_interaction("pairwise_dot", is_pairwise_dot, rewrite_pairwise_dot, vectors=True)
