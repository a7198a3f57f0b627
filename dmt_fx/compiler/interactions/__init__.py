"""Interaction kinds, one file each; `INTERACTIONS` is the registry (see base.py).

Add a kind with `dmt_fx.register_interaction(kind, matcher, rewriter, vectors=...)` from your
code, or as a new file here (it is imported below with the others)."""

from __future__ import annotations

from dmt_fx.compiler.interactions.base import (
    INTERACTIONS,
    InteractionKind,
    Matcher,
    Rewriter,
    interaction_kind,
    keeps_whole,
    match_interaction,
    module_matcher,
    register_interaction,
)
from dmt_fx.compiler.interactions.context import InteractionContext
from dmt_fx.compiler.plugins import import_all

__all__ = ["INTERACTIONS", "InteractionContext", "InteractionKind", "Matcher", "Rewriter", "interaction_kind",
           "keeps_whole", "match_interaction", "module_matcher", "register_interaction"]

import_all(__name__, __path__)
