"""train() / eval() in a run: the mode of the training steps, seeded steps, evaluation.

Flags (added to the worker's):
  --train-mode {as-built,train,eval}: the distributed model's mode for the training steps
      (as-built: the mode the target's factory left the model in);
  --step-seed: torch's RNG seeded with `step_seed(step, rank)` before each step, so dropout
      draws masks a single-process reference can draw again;
  --eval-steps K: after training, K forwards in eval mode on the batches of steps
      steps .. steps + K - 1 (seeded the same way), saved to OUT/eval_outputs_rank<r>.pt.
With --record-outputs the rank also saves its plain (replicated) state, buffers included,
to OUT/state_rank<r>.pt: batch-norm running statistics are per rank under DDP
(`broadcast_buffers=False`, as TorchRec's wrapper), so they are compared rank by rank.
"""

from __future__ import annotations

import argparse
import os
from typing import Callable

import torch
import torch.nn as nn

from dmt_fx.runtime.pipeline import PipelineBatch


def add_mode_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-mode", choices=("as-built", "train", "eval"), default="as-built",
                        help="the model's mode during the training steps")
    parser.add_argument("--step-seed", action="store_true", help="seed torch's RNG per (step, rank)")
    parser.add_argument("--eval-steps", type=int, default=0, help="eval-mode forwards after training")


def step_seed(step: int, rank: int) -> int:
    """The RNG seed of rank `rank` at step `step` (a reference run draws the same masks)."""
    return 1_000_003 * step + rank


def set_train_mode(module: nn.Module, mode: str) -> None:
    if mode != "as-built":
        module.train(mode == "train")


def seed_step(args: argparse.Namespace, step: int, rank: int) -> None:
    if args.step_seed:
        torch.manual_seed(step_seed(step, rank))


def evaluate(args: argparse.Namespace, module: nn.Module, batch: Callable[[int], PipelineBatch], rank: int) -> None:
    """`--eval-steps` forwards in eval mode, then the mode of before; outputs to OUT."""
    if not args.eval_steps:
        return
    training, outputs = module.training, []
    module.eval()
    with torch.no_grad():
        for step in range(args.steps, args.steps + args.eval_steps):
            seed_step(args, step, rank)
            outputs.append(module(*batch(step).inputs).detach().clone())
    module.train(training)
    torch.save(outputs, os.path.join(args.out, f"eval_outputs_rank{rank}.pt"))


def save_plain_state(args: argparse.Namespace, module: nn.Module, rank: int) -> None:
    """This rank's plain tensors of the state dict (dense weights and buffers, not shards)."""
    plain = {k: v.detach().clone() for k, v in module.state_dict().items() if type(v) is torch.Tensor}
    torch.save(plain, os.path.join(args.out, f"state_rank{rank}.pt"))
