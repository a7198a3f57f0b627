"""Interaction kind "concat": the embeddings concatenated with the dense path (no matmul of
the result), matched by its graph pattern. The rewrite concatenates the towers' outputs in
place of the embeddings and rebuilds the first linear layer after it for the new width."""

from __future__ import annotations

import torch.fx as fx

from dmt_fx.compiler.interactions.base import register_interaction
from dmt_fx.compiler.interactions.context import InteractionContext
from dmt_fx.compiler.interactions.pairwise_dot import feeds_matmul, is_concatenation


def is_concat(gm: fx.GraphModule, node: fx.Node) -> bool:
    return is_concatenation(node) and not feeds_matmul(node)


def rewrite_concat(ctx: InteractionContext) -> None:
    ctx.node.update_arg(0, ctx.replace_embedding_items(list(ctx.node.args[0])))
    ctx.rebuild_next_linear()


register_interaction("concat", is_concat, rewrite_concat, vectors=False)
