"""Optimizers and initial weights of the distributed model.

The sharded tables are updated by TorchRec's fused embedding optimizers during backward
(the one matching the dense optimizer: `fused_params`); everything else (dense layers,
tower modules) by the dense optimizer. One `CombinedOptimizer` steps both. The shards start
from the logical model's tables (`copy_into_shards`), so every rank starts where the
single-process model starts.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper

from dmt_fx._compat import ShardedTensor
from dmt_fx.ir.errors import DMTError
from dmt_fx.runtime.dense_tables import TableStateOptimizer

# TorchRec's default on GPU; asked for explicitly because the CPU default is the DENSE
# kernel, whose tables would need the dense optimizer instead of a fused one.
FUSED = EmbeddingComputeKernel.FUSED.value
DENSE = EmbeddingComputeKernel.DENSE.value


def table_kernel(optimizer_class: type, device: torch.device) -> str:
    """TorchRec's compute kernel for the sharded tables: FUSED (the optimizer runs inside
    FBGEMM's backward), except Adam on the CPU, which FBGEMM's CPU build does not fuse
    ("Optimizer adam is not supported in CPU mode"). There the tables use the DENSE kernel:
    autograd gives their shards dense gradients and the dense Adam steps them with every
    other parameter, so every row moves each step exactly as torch.optim.Adam moves the
    original's table."""
    return DENSE if optimizer_class is torch.optim.Adam and device.type == "cpu" else FUSED


def fused_params(optimizer_class: type, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """TorchRec's fused embedding optimizer matching the dense one."""
    lr = kwargs.get("lr", 1e-3)
    if optimizer_class is torch.optim.SGD and not kwargs.get("momentum") and not kwargs.get("weight_decay"):
        return {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": lr}
    if optimizer_class is torch.optim.Adagrad:
        return {"optimizer": EmbOptimType.EXACT_ADAGRAD, "learning_rate": lr, "eps": kwargs.get("eps", 1e-10)}
    if optimizer_class is torch.optim.Adam:
        betas = kwargs.get("betas", (0.9, 0.999))
        return {"optimizer": EmbOptimType.ADAM, "learning_rate": lr, "eps": kwargs.get("eps", 1e-8),
                "beta1": betas[0], "beta2": betas[1], "weight_decay": kwargs.get("weight_decay", 0.0)}
    raise DMTError(f"optimizer {optimizer_class.__name__} with {dict(kwargs)}",
                   "torch.optim.SGD (no momentum), Adagrad or Adam: the ones TorchRec fuses into embeddings",
                   ["use one of those optimizers"])


def copy_into_shards(sharded_state: Mapping[str, Any], full_state: Mapping[str, torch.Tensor]) -> None:
    """Start the shards from the logical model's tables (equal initial weights).

    `sharded_state` is a sharded module's state_dict (ShardedTensors hold this rank's
    shards); `full_state` the unsharded tables under the same keys."""
    with torch.no_grad():
        for key, value in sharded_state.items():
            source = full_state[key]
            if isinstance(value, ShardedTensor):
                for shard in value.local_shards():
                    (r, c), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    shard.tensor.copy_(source[r:r + nr, c:c + nc])
            else:
                value.copy_(source)


def combined_optimizer(module: nn.Module, excluded: Iterable[nn.Module], optimizer_class: type,
                       kwargs: Mapping[str, Any], fused: list[tuple[str, KeyedOptimizer]],
                       dense_tables: Sequence[nn.Module] = ()) -> CombinedOptimizer:
    """The dense optimizer over every trainable parameter of `module` outside `excluded`
    (the sharded lookups, which their fused optimizers update), combined with those. Tables
    on the DENSE kernel (`dense_tables`) are not excluded: the dense optimizer updates their
    shards, and its checkpoints show their state sharded like the tables (dense_tables.py)."""
    skip = {id(p) for m in excluded for p in m.parameters()}
    dense = {n: p for n, p in module.named_parameters() if id(p) not in skip and p.requires_grad}
    optimizers: list[tuple[str, KeyedOptimizer]] = [
        ("dense", KeyedOptimizerWrapper(dense, lambda ps: optimizer_class(ps, **kwargs)))]
    if dense_tables:
        return TableStateOptimizer(optimizers + fused, dense_tables)
    return CombinedOptimizer(optimizers + fused)
