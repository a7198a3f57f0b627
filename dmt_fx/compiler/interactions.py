"""Registry of interaction kinds the interaction rewrite knows (built-in and user-registered).

A kind has a matcher `(gm, node) -> bool` (used by the analysis to name the interaction
site) and a rewriter `(ctx: InteractionContext) -> None` that feeds the towers' outputs to
the interaction and rebuilds what depends on its width (see passes/interaction.py).
"""

from __future__ import annotations

from typing import Callable

import torch.fx as fx

Matcher = Callable[[fx.GraphModule, fx.Node], bool]
Rewriter = Callable[..., None]

USER_KINDS: dict[str, tuple[Matcher, Rewriter, bool]] = {}


def register_interaction(kind: str, matcher: Matcher, rewriter: Rewriter, *, vectors: bool = False) -> None:
    """Teach dmt_fx an interaction of your own.

    `matcher(gm, node)` says whether `node` (the first node joining all embeddings with the
    dense path) is your interaction; `rewriter(ctx)` gets an `InteractionContext` and must
    make `ctx.node` consume the towers' outputs (`ctx.flat()` or `ctx.stacked()`), rebuilding
    modules whose width changes (`ctx.rebuild_next_linear(...)` helps). `vectors=True` asks
    tower modules for whole D-wide vectors (dot-product style interactions)."""
    USER_KINDS[kind] = (matcher, rewriter, vectors)


def user_kind(gm: fx.GraphModule, node: fx.Node) -> str | None:
    for kind, (matcher, _, _) in USER_KINDS.items():
        if matcher(gm, node):
            return kind
    return None
