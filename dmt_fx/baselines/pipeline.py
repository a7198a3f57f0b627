"""Flat baselines under TorchRec's own `TrainPipelineSparseDist`.

TorchRec's pipeline calls `model(batch)` on a `Pipelineable` batch and expects (losses,
output); it traces the model under DMP and pipelines every sharded module whose input is
an attribute / item of the batch: that module's `input_dist` for batch i+1 starts before
batch i's forward (splits all-to-all) and its tensors all-to-all is issued after it.
`TrainModel` is the thin wrapper it needs (the model on `batch.inputs`, the worker's
binary cross-entropy on `batch.labels`; state dicts with the model's own keys): build the baseline on `TrainModel(model)`, then
`flat_pipeline(module, optimizer)`. `pipelined_modules(pipeline)` says what TorchRec
really pipelined (empty: it runs the step unoverlapped).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.profiler import record_function
from torchrec.distributed.train_pipeline.train_pipelines import TrainPipelineSparseDist

from dmt_fx._compat import StagedTrainPipeline
from dmt_fx._compat import pipelined_modules as compat_pipelined_modules
from dmt_fx.baselines.registry import BASELINES, FLAT, baseline_names
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.stages import Stage, stage_range
from dmt_fx.runtime.groups import runtime_device
from dmt_fx.runtime.pipeline import PipelineBatch

__all__ = ["PipelineBatch", "StagedSparseDist", "TrainModel", "check_pipelinable", "flat_pipeline",
           "pipelined_modules"]


class TrainModel(nn.Module):
    """`model(batch)` -> (loss, (loss, logits)) for TorchRec's pipelines; `arity` is the
    number of positional inputs of the wrapped model (fx cannot unpack a traced tuple)."""

    def __init__(self, model: nn.Module, arity: int) -> None:
        super().__init__()
        self.model, self.arity = model, arity

    # Checkpoints keep the model's own keys (no 'model.' prefix): DMP asks this module for
    # its state dict, and hands it loading whole when this flag is set.
    _FORCE_STATE_DICT_LOAD = True

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, batch: PipelineBatch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        out = self.model(*[batch.inputs[i] for i in range(self.arity)])
        loss = F.binary_cross_entropy_with_logits(out, batch.labels)
        return loss, (loss.detach(), out.detach())


class StagedSparseDist(StagedTrainPipeline):
    """TorchRec's pipeline with the step's stages in dmt_fx's profiler ranges (breakdown_s)."""

    def stage(self, name: str) -> record_function:
        return record_function(stage_range(Stage.BACKWARD if name == "backward" else Stage.OPTIMIZER))


def check_pipelinable(name: str) -> None:
    """Only the flat family runs under TorchRec's pipeline: it traces the model with fx, and
    torchrec-towers' hand-built adapter iterates a traced value (TraceError at the first step)."""
    if BASELINES.get(name).family != FLAT:
        raise DMTError(f"baseline {name!r} with --pipeline", "a flat baseline (TorchRec's pipeline fx-traces the "
                       f"model): {', '.join(baseline_names(FLAT))}", [f"run {name} without --pipeline"])


def flat_pipeline(module: nn.Module, optimizer: torch.optim.Optimizer) -> TrainPipelineSparseDist:
    """TorchRec's sparse-dist pipeline over a baseline built on `TrainModel`. 2D's weight
    sync stays in its optimizer (the pipeline's own DMPCollection sync is off)."""
    def forward(batch: Any) -> Any:
        with record_function(stage_range(Stage.DENSE_FORWARD)):
            return module(batch)
    return StagedSparseDist(module, optimizer, runtime_device(), custom_model_fwd=forward,
                            dmp_collection_sync_interval_batches=None)


def pipelined_modules(pipeline: TrainPipelineSparseDist) -> list[str]:
    """The sharded modules whose input dist TorchRec pipelined (known after the first progress)."""
    return [getattr(m.forward, "name", type(m).__name__) for m in compat_pipelined_modules(pipeline)]
