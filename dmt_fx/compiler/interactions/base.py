"""Interaction kinds: the registry the analysis matches against and the rewrite dispatches on.

A kind is a matcher `(gm, node) -> bool`, which names the interaction site (the first node
joining every embedding with the dense path), and a rewriter `(ctx: InteractionContext) ->
None`, which makes that node read the towers' outputs (see context.py). The built-ins are
one file each in this package and register through `register_interaction`, the call users
make, so `INTERACTIONS.names()` is the one list of kinds. Matchers look at structure (a
module's attributes, submodules and forward signature, or the graph pattern), never at
class identity, so a copy of torchrec's code in another module is recognised too.

Kinds are tried newest first: a kind registered by the user wins over a built-in that
matches the same node.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import torch.fx as fx
import torch.nn as nn

from dmt_fx.compiler.interactions.context import InteractionContext
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.registry import Registry

Matcher = Callable[[fx.GraphModule, fx.Node], bool]
Rewriter = Callable[[InteractionContext], None]
ModulePredicate = Callable[[nn.Module], bool]


@dataclasses.dataclass(frozen=True)
class InteractionKind:
    name: str
    matcher: Matcher
    rewriter: Rewriter
    vectors: bool  # tower outputs must be whole D-wide vectors (dot-product style)
    module: ModulePredicate | None  # modules the capture keeps whole (leaves), or None


INTERACTIONS: Registry[InteractionKind] = Registry(
    "interaction kind", "dmt_fx.register_interaction(kind, matcher, rewriter, vectors=...)")


def register_interaction(kind: str, matcher: Matcher, rewriter: Rewriter, *, vectors: bool = False,
                         module: ModulePredicate | None = None) -> None:
    """Teach dmt_fx an interaction of your own.

    `matcher(gm, node)` says whether `node` (the first node joining all embeddings with the
    dense path) is your interaction; `rewriter(ctx)` gets an `InteractionContext` and must
    make `ctx.node` consume the towers' outputs (`ctx.flat()` or `ctx.stacked()`), rebuilding
    modules whose width changes (`ctx.rebuild_next_linear(...)` helps). `vectors=True` asks
    tower modules for whole D-wide vectors (dot-product style interactions). `module`, a
    predicate on nn.Modules, makes the capture keep the modules it accepts whole (one
    call_module node) instead of tracing through them.

    Args:
        kind: the kind's name (shown by `dmt-fx plan` and in `ModelSites`).
        matcher: `(gm, node) -> bool`.
        rewriter: `(InteractionContext) -> None`, rewriting the graph in place.
        vectors: whether tower modules must return whole D-wide vectors.
        module: a predicate on modules the capture keeps whole.

    Returns:
        None. The newest kind whose matcher accepts a node wins.

    Raises:
        DMTError: `kind` is not a non-empty string.

    Example:
        >>> import dmt_fx
        >>> from dmt_fx.compiler.interactions import INTERACTIONS
        >>> dmt_fx.register_interaction("never", lambda gm, node: False, lambda ctx: None)
        >>> "never" in INTERACTIONS
        True
    """
    INTERACTIONS.register(kind, InteractionKind(kind, matcher, rewriter, vectors, module))


def match_interaction(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """The newest registered kind whose matcher accepts `node`, or None."""
    for name, kind in reversed(INTERACTIONS.items()):
        if kind.matcher(gm, node):
            return name
    return None


def keeps_whole(module: nn.Module) -> bool:
    """Whether some kind asks the capture to keep `module` as one call (a tracer leaf)."""
    return any(kind.module is not None and kind.module(module) for _, kind in INTERACTIONS.items())


def interaction_kind(kind: str) -> InteractionKind:
    """The registered kind, or a DMTError saying how to register one."""
    if kind not in INTERACTIONS:
        raise DMTError(f"an interaction of kind {kind!r}",
                       f"one of {', '.join(INTERACTIONS.names())} or a kind registered with "
                       "dmt_fx.register_interaction",
                       ["register it: dmt_fx.register_interaction(kind, matcher, rewriter)",
                        "or keep tower_module='identity', which needs no interaction rewrite"])
    return INTERACTIONS.get(kind)


def module_matcher(predicate: ModulePredicate) -> Matcher:
    """A matcher accepting call_module nodes whose module satisfies `predicate`."""

    def matcher(gm: fx.GraphModule, node: fx.Node) -> bool:
        return node.op == "call_module" and predicate(gm.get_submodule(node.target))

    return matcher


def forward_params(module: nn.Module) -> tuple[str, ...]:
    """The names of `module.forward`'s parameters (structure, not class identity)."""
    try:
        return tuple(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return ()


def function_name(node: fx.Node) -> str | None:
    """The name of a call_function / call_method target ("cat", "bmm", ...), else None."""
    if node.op not in ("call_function", "call_method"):
        return None
    return getattr(node.target, "__name__", str(node.target))
