"""The one reference training loop: the original model trained in one process.

A DMT job on H x L ranks, each with a local batch of B samples, must train exactly as the
original model trained in one process on the global batches (B * world samples, step `s`
made by `make_inputs(B * world, s)`), with the labels the worker uses (`clicks`) and the same
optimizer. `train_steps` is that loop; `train_original` builds the optimizer by name.
`per_rank_reference` is its variant for models with mode-dependent modules (batch norm,
dropout), which run each rank's local batch as that rank does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from dmt_fx.jobs.data import clicks, slice_batch
from dmt_fx.jobs.modes import step_seed
from dmt_fx.jobs.steps import batch_of

if TYPE_CHECKING:
    from tests.harness.cases import Case

LR = 0.1
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam}
Labels = Callable[[Any, int], torch.Tensor]  # (inputs, step) -> labels


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, make_inputs: Callable[[int, int], Any],
                global_batch: int, steps: int, labels: Labels = clicks) -> list[torch.Tensor]:
    """Train `model` in one process on the job's global batches; each step's outputs."""
    outputs = []
    for step in range(steps):
        inputs = make_inputs(global_batch, step)
        out = model(*inputs)
        outputs.append(out.detach())
        loss = F.binary_cross_entropy_with_logits(out, labels(inputs, step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return outputs


def train_original(model: nn.Module, make_inputs: Callable[[int, int], Any], global_batch: int, steps: int,
                   optimizer: str = "sgd", lr: float = LR) -> tuple[list[torch.Tensor], nn.Module]:
    """`train_steps` with the optimizer the worker's `--optimizer NAME --lr LR` builds."""
    opt = OPTIMIZERS[optimizer](model.parameters(), lr=lr)
    return train_steps(model, opt, make_inputs, global_batch, steps), model


# ---------------------------------------------------------------- modes (batch norm, dropout)


def per_rank_reference(case: Case, world: int, steps: int, eval_steps: int,
                       training: bool | None = None) -> tuple[list, list, nn.Module, list[dict]]:
    """Single-process training that runs each rank's local batch as that rank does: its own
    batch-norm running statistics (DDP keeps buffers per rank), its own dropout seed
    (`step_seed`), the mean of the ranks' losses. Returns (each step's outputs, each eval
    step's outputs, the trained model, each rank's final buffers by name)."""
    model = case.build()
    if training is not None:
        model.train(training)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    batches = [batch_of(case.make_inputs, slice_batch, r, world, case.batch_size) for r in range(world)]
    buffers = [{n: b.clone() for n, b in model.named_buffers()} for _ in range(world)]
    outputs = []
    for step in range(steps):
        outs, losses = _ranks_forward(model, batches, buffers, step)
        optimizer.zero_grad()
        (sum(losses) / world).backward()
        optimizer.step()
        outputs.append(torch.cat(outs))
    mode, evals = model.training, []
    model.eval()
    with torch.no_grad():
        evals = [torch.cat(_ranks_forward(model, batches, buffers, s)[0]) for s in range(steps, steps + eval_steps)]
    model.train(mode)
    return outputs, evals, model, buffers


def _ranks_forward(model: nn.Module, batches: list, buffers: list[dict], step: int) -> tuple[list, list]:
    outs, losses = [], []
    for rank, batch in enumerate(batches):
        _use_buffers(model, buffers[rank])  # objects, not copies: autograd saved the others
        torch.manual_seed(step_seed(step, rank))
        local = batch(step)
        out = model(*local.inputs)
        outs.append(out.detach())
        losses.append(F.binary_cross_entropy_with_logits(out, local.labels))
    return outs, losses


def _use_buffers(model: nn.Module, buffers: dict[str, torch.Tensor]) -> None:
    for name, tensor in buffers.items():
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._buffers[leaf] = tensor


def train_rank_steps(module: nn.Module, optimizer: Any, make_inputs: Callable[[int, int], Any], rank: int,
                     world: int, local_batch: int, steps: int) -> list[torch.Tensor]:
    """One rank of a distributed module trained on its slice of the job's global batches
    (the worker's `labels`); each step's local outputs."""
    from dmt_fx.jobs.data import labels

    outputs = []
    lo, hi = rank * local_batch, (rank + 1) * local_batch
    for step in range(steps):
        out = module(*slice_batch(make_inputs(local_batch * world, step), lo, hi))
        loss = F.binary_cross_entropy_with_logits(out, labels(local_batch * world, step)[lo:hi])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        outputs.append(out.detach().clone())
    return outputs
