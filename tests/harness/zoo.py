"""The models of `examples/` as worker targets: one job of a zoo model on a torchrun world
(`run_example`), the same model trained in one process (`reference`), a DCP checkpoint
loaded back into the original (`load_checkpoint_into_original`)."""

from __future__ import annotations

import importlib
import os

import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn

from dmt_fx.jobs.launch import LaunchResult
from tests.harness.cases import gathered_outputs  # noqa: F401 (the zoo jobs' outputs, re-exported)
from tests.harness.launch import launch_job
from tests.harness.training import LR, train_original

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
B, STEPS = 4, 5


def target(name: str) -> str:
    return f"{ROOT}/examples/{name}.py:build"


def run_example(tmp_path, name: str, topology: str, *extra: str, worker_topology: str | None = None) -> LaunchResult:
    """`examples/<name>.py:build` trained STEPS steps of B samples per rank on `topology`'s
    emulated hosts (`worker_topology`: a different topology told to the worker)."""
    out = str(tmp_path / f"{name}-{topology}")
    args = ["--target", target(name), "--topology", worker_topology or topology, "--steps", str(STEPS),
            "--batch-size", str(B), "--lr", str(LR), "--out", out, "--timeout-s", "60", *extra]
    return launch_job(topology, args, out, deadline_s=240, grace_s=60)


def reference(name: str, world: int, steps: int = STEPS, model: nn.Module | None = None
              ) -> tuple[list[torch.Tensor], nn.Module]:
    """Single-process training of the original model (or `model`) on the global batches."""
    module = importlib.import_module(f"examples.{name}")
    model = model if model is not None else module.build()[0]
    return train_original(model, module.make_inputs, B * world, steps)


def load_checkpoint_into_original(name: str, path: str) -> nn.Module:
    module = importlib.import_module(f"examples.{name}")
    model = module.build(seed=123)[0]  # different weights: everything must come from the checkpoint
    state = model.state_dict()
    dcp.load(state, checkpoint_id=path)
    model.load_state_dict(state)
    return model
