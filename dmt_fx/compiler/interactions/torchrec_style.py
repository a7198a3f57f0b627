"""What torchrec's three interaction arches share, by structure: an int attribute `F` (the
number of sparse features) and `forward(dense_features, sparse_features)` with sparse
features of shape (B, F, D). Their rewrite swaps the module for one built for K tower
vectors and feeds it the towers' outputs stacked as (B, K, D)."""

from __future__ import annotations

import torch.nn as nn

from dmt_fx.compiler.interactions.base import forward_params
from dmt_fx.compiler.interactions.context import InteractionContext


def has_arch_interface(module: nn.Module) -> bool:
    return isinstance(getattr(module, "F", None), int) and forward_params(module) == ("dense_features",
                                                                                      "sparse_features")


def child_names(module: nn.Module) -> set[str]:
    return {name for name, _ in module.named_children()}


def replace_arch(ctx: InteractionContext, new: nn.Module) -> None:
    """Put `new` where the interaction module was and feed it the stacked tower outputs."""
    owner, _, name = ctx.node.target.rpartition(".")
    setattr(ctx.gm.get_submodule(owner) if owner else ctx.gm, name, new)
    stacked = ctx.stacked()
    if "sparse_features" in ctx.node.kwargs:
        ctx.node.update_kwarg("sparse_features", stacked)
    else:
        ctx.node.update_arg(1, stacked)
