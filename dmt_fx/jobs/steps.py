"""How the worker runs its training steps: one step at a time, or through a train pipeline.

Unpipelined (`--pipeline` off): forward, loss, zero_grad, backward, step, per batch.
Pipelined (`--pipeline`): DMT through `dmt_fx.runtime.pipeline.DMTTrainPipeline` (batch
i+1's peer id exchange and intra-host input dist while batch i computes), a baseline
through TorchRec's `TrainPipelineSparseDist` (`dmt_fx.baselines.pipeline`). Either way
step s trains on the same local batch: `make_inputs(N x B, seed=s)`, rows [r*B, (r+1)*B).
Batches are made before the step that needs them (`prepare`), outside its timed part: a
pipeline reads up to `lookahead` batches ahead.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from dmt_fx.ir.stages import Stage, stage_range
from dmt_fx.jobs.data import clicks
from dmt_fx.runtime.pipeline import DMTTrainPipeline, PipelineBatch

__all__ = ["PIPELINED", "Steps", "pipelined_variants", "split_variant", "train_step"]

PIPELINED = "+pipeline"  # a variant name ending in it trains through a pipeline (worker --variants)


def split_variant(name: str, pipeline: bool = False) -> tuple[str, bool]:
    """'dmt-c4+pipeline' -> ('dmt-c4', True); 'dmt-c4' -> ('dmt-c4', `pipeline`)."""
    if name.endswith(PIPELINED):
        return name[:-len(PIPELINED)], True
    return name, pipeline


def pipelined_variants(variants: list[str], mode: str) -> list[str]:
    """The variants a `--pipeline off|on|both` run trains: both puts each variant's pipelined
    run right after its unpipelined one (the two see the same machine load)."""
    if mode not in ("off", "on", "both"):
        raise ValueError(f"pipeline mode {mode!r}: expected off, on or both")
    per = {"off": ("",), "on": (PIPELINED,), "both": ("", PIPELINED)}[mode]
    return [v + suffix for v in variants for suffix in per]


def train_step(module: torch.nn.Module, optimizer: Any, local: tuple, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step inside the worker's stage ranges (the runtime opens the DMT ones)."""
    with torch.profiler.record_function(stage_range(Stage.DENSE_FORWARD)):
        out = module(*local)
        loss = F.binary_cross_entropy_with_logits(out, y)
    with torch.profiler.record_function(stage_range(Stage.OPTIMIZER)):
        optimizer.zero_grad()
    with torch.profiler.record_function(stage_range(Stage.BACKWARD)):
        loss.backward()
    with torch.profiler.record_function(stage_range(Stage.OPTIMIZER)):
        optimizer.step()
    return out, loss


class Steps:
    """Steps `first` .. `last - 1` of one rank; `run(step)` -> (local outputs, local loss)."""

    def __init__(self, module: torch.nn.Module, optimizer: Any, batch: Callable[[int], PipelineBatch],
                 first: int, last: int, pipeline: str) -> None:
        """`pipeline`: "off", "dmt" or "torchrec"."""
        self.module, self.optimizer, self.batch = module, optimizer, batch
        self.last, self.next_step, self.made = last, first, {}
        self.pipeline: Any = None
        self.lookahead = {"off": 0, "dmt": 1, "torchrec": 2}[pipeline]
        if pipeline == "dmt":
            self.pipeline = DMTTrainPipeline(module, optimizer)
        elif pipeline == "torchrec":
            from dmt_fx.baselines.pipeline import flat_pipeline  # the jobs may import baselines

            self.pipeline = flat_pipeline(module, optimizer)

    def prepare(self, step: int) -> None:
        for s in range(step, min(step + self.lookahead + 1, self.last)):
            if s not in self.made and s >= self.next_step:
                self.made[s] = self.batch(s)

    def __iter__(self) -> Steps:
        return self

    def __next__(self) -> PipelineBatch:
        """The pipeline's data loader: the batches in step order."""
        if self.next_step >= self.last:
            raise StopIteration
        step, self.next_step = self.next_step, self.next_step + 1
        return self.made.pop(step) if step in self.made else self.batch(step)

    def run(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pipeline is None:
            batch = next(self)
            return train_step(self.module, self.optimizer, batch.inputs, batch.labels)
        loss, out = self.pipeline.progress(self)
        return out, loss

    def pipelined_modules(self) -> list[str]:
        """What the pipeline overlaps: TorchRec's pipelined sharded modules, or DMT's exchange."""
        if isinstance(self.pipeline, DMTTrainPipeline):
            return [type(self.pipeline.exchange).__name__]
        if self.pipeline is not None:
            from dmt_fx.baselines.pipeline import pipelined_modules

            return pipelined_modules(self.pipeline)
        return []


def batch_of(make: Callable[[int, int], tuple], cut: Callable[[Any, int, int], Any], rank: int, world: int,
             local_batch: int) -> Callable[[int], PipelineBatch]:
    """Step s's local batch of this rank, as a pipeline takes it."""
    def batch(step: int) -> PipelineBatch:
        inputs = make(local_batch * world, step)
        y = clicks(inputs, step)
        start, stop = rank * local_batch, (rank + 1) * local_batch
        return PipelineBatch(tuple(cut(inputs, start, stop)), y[start:stop])
    return batch
