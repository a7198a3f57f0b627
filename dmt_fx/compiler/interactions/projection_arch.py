"""Interaction kind "torchrec.InteractionProjectionArch": dots between two MLP projections of
[dense, F sparse vectors], recognised by structure: the shared arch interface and exactly the
submodules `interaction_branch1` and `interaction_branch2`."""

from __future__ import annotations

import copy

import torch.nn as nn
from torchrec.models.dlrm import InteractionProjectionArch

from dmt_fx.compiler.interactions.base import module_matcher, register_interaction
from dmt_fx.compiler.interactions.context import InteractionContext
from dmt_fx.compiler.interactions.torchrec_style import child_names, has_arch_interface, replace_arch
from dmt_fx.ir.errors import DMTError

BRANCHES = ("interaction_branch1", "interaction_branch2")


def is_projection_arch(module: nn.Module) -> bool:
    return has_arch_interface(module) and child_names(module) == set(BRANCHES)


def _widen_first_linear(branch: nn.Module, width: int) -> nn.Module:
    """A copy of `branch` whose first nn.Linear reads `width` features (fresh weights)."""
    branch = copy.deepcopy(branch)  # the graph's leaf modules are the user's own objects
    for name, child in branch.named_modules():
        if isinstance(child, nn.Linear):
            owner, _, leaf = name.rpartition(".")
            setattr(branch.get_submodule(owner), leaf,
                    nn.Linear(width, child.out_features, bias=child.bias is not None))
            return branch
    raise DMTError(f"{type(branch).__name__} without a linear layer", "an MLP interaction branch",
                   ["register your own interaction kind for this model"])


def rewrite_projection_arch(ctx: InteractionContext) -> None:
    old = ctx.gm.get_submodule(ctx.node.target)
    k, d = ctx.num_vectors, ctx.vector_dim
    branches = [_widen_first_linear(getattr(old, name), (k + 1) * d) for name in BRANCHES]
    replace_arch(ctx, InteractionProjectionArch(k, *branches))
    ctx.rebuild_next_linear(with_towers=True)  # dots only: add the towers' own outputs


register_interaction("torchrec.InteractionProjectionArch", module_matcher(is_projection_arch),
                     rewrite_projection_arch, vectors=True, module=is_projection_arch)
