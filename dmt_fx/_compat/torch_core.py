"""Private names of torch's core (nn.Module internals, aten ops, dispatch, pytree, autograd).

Each entry says why we need it; all were checked on torch 2.13.0. tests/test_compat.py checks
that each still exists with the shape we rely on.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.utils import _pytree
from torch.utils._python_dispatch import TorchDispatchMode as _TorchDispatchMode

# pytree: flattening of batches and outputs (MappingKey, SUPPORTED_NODES, register_pytree_node);
# torch has no public module with these (torch 2.13.0).
pytree = _pytree

# The base of dispatch modes that count ops and collectives; no public alias (torch 2.13.0).
TorchDispatchMode = _TorchDispatchMode

# Base classes of conv layers, dropout layers and normalisation layers: isinstance checks over
# every variant (Conv1d/2d/3d/Transpose, Dropout*, BatchNorm*/InstanceNorm*) (torch 2.13.0).
ConvNd = nn.modules.conv._ConvNd
DropoutNd = nn.modules.dropout._DropoutNd
NormBase = nn.modules.batchnorm._NormBase

# aten ops an exported graph may hold: the bag lookup, export's assertions, and batch norm's
# decompositions (torch 2.13.0).
EMBEDDING_BAG_OP = torch.ops.aten._embedding_bag.default
ASSERT_OPS = (torch._assert, torch.ops.aten._assert_scalar.default, torch.ops.aten._assert_tensor_metadata.default)
BATCH_NORM_LEGIT_OPS = (torch.ops.aten._native_batch_norm_legit.default,
                        torch.ops.aten._native_batch_norm_legit_functional.default)


# Module internals: a shallow copy with its own dicts, and persistence of buffers, need the
# dicts themselves (named_* do not say whether a buffer is persistent) (torch 2.13.0).
def module_parameters(module: nn.Module) -> dict[str, Any]:
    return module._parameters


def module_buffers(module: nn.Module) -> dict[str, Any]:
    return module._buffers


def module_children(module: nn.Module) -> dict[str, Any]:
    return module._modules


def set_module_dicts(module: nn.Module, parameters: dict, buffers: dict, children: dict) -> None:
    """Give `module` its own parameter, buffer and child dicts (a shallow copy's)."""
    object.__setattr__(module, "_parameters", parameters)
    object.__setattr__(module, "_buffers", buffers)
    object.__setattr__(module, "_modules", children)


def non_persistent_buffers(module: nn.Module) -> set[str]:
    """The names of `module`'s own buffers left out of its state_dict (a live set)."""
    return module._non_persistent_buffers_set


# The post-hook of state_dict with the (module, state, prefix, local_metadata) signature that
# TorchRec's own hooks use, and the hooks' dict, to run state_dict once without ours (torch 2.13.0).
def register_state_dict_post_hook(module: nn.Module, hook: Any) -> None:
    module._register_state_dict_hook(hook)


def state_dict_hooks(module: nn.Module) -> dict[int, Any]:
    return module._state_dict_hooks


# Whether the current thread runs a backward pass (the autograd engine's graph task id):
# collectives are counted per phase (torch 2.13.0).
def in_backward() -> bool:
    return torch._C._current_graph_task_id() >= 0


# An OpOverload's argument names, to bind an exported node's positional args (torch 2.13.0).
def op_argument_names(op: Any) -> list[str]:
    return [a.name for a in op._schema.arguments]
