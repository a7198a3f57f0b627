"""Interaction kind "torchrec.InteractionDCNArch": a low-rank DCN over [dense, F sparse
vectors], recognised by structure: the shared arch interface and one submodule `crossnet`
shaped like torchrec's LowRankCrossNet (its layer count and low rank)."""

from __future__ import annotations

import torch.nn as nn
from torchrec.models.dlrm import InteractionDCNArch
from torchrec.modules.crossnet import LowRankCrossNet

from dmt_fx._compat import crossnet_shape
from dmt_fx.compiler.interactions.base import module_matcher, register_interaction
from dmt_fx.compiler.interactions.context import InteractionContext
from dmt_fx.compiler.interactions.torchrec_style import child_names, has_arch_interface, replace_arch


def is_dcn_arch(module: nn.Module) -> bool:
    if not has_arch_interface(module) or child_names(module) != {"crossnet"}:
        return False
    return crossnet_shape(module.crossnet) is not None


def rewrite_dcn_arch(ctx: InteractionContext) -> None:
    net = ctx.gm.get_submodule(ctx.node.target).crossnet
    k, d = ctx.num_vectors, ctx.vector_dim
    layers, rank = crossnet_shape(net) or (0, 0)  # is_dcn_arch matched it: never (0, 0)
    replace_arch(ctx, InteractionDCNArch(k, LowRankCrossNet((k + 1) * d, layers, rank)))
    # Cross layers keep their input (x_{l+1} = x0 * (W x_l + b) + x_l): the towers' outputs
    # reach the over-arch already.
    ctx.rebuild_next_linear()


register_interaction("torchrec.InteractionDCNArch", module_matcher(is_dcn_arch), rewrite_dcn_arch,
                     vectors=True, module=is_dcn_arch)
