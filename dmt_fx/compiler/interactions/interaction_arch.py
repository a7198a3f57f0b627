"""Interaction kind "torchrec.InteractionArch": the DLRM dot interaction as torchrec writes it
(pairwise dots of [dense, F sparse vectors]), recognised by structure: the shared arch
interface, a `triu_indices` tensor and no submodules or parameters."""

from __future__ import annotations

import torch
import torch.nn as nn
from torchrec.models.dlrm import InteractionArch

from dmt_fx.compiler.interactions.base import module_matcher, register_interaction
from dmt_fx.compiler.interactions.context import InteractionContext
from dmt_fx.compiler.interactions.torchrec_style import child_names, has_arch_interface, replace_arch


def is_interaction_arch(module: nn.Module) -> bool:
    return (has_arch_interface(module) and not child_names(module)
            and isinstance(getattr(module, "triu_indices", None), torch.Tensor)
            and next(module.parameters(), None) is None)


def rewrite_interaction_arch(ctx: InteractionContext) -> None:
    replace_arch(ctx, InteractionArch(ctx.num_vectors))
    # A dot interaction passes the towers' own outputs on only as products: add them.
    ctx.rebuild_next_linear(with_towers=True)


register_interaction("torchrec.InteractionArch", module_matcher(is_interaction_arch), rewrite_interaction_arch,
                     vectors=True, module=is_interaction_arch)
