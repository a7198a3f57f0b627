"""Many (model, plan) cases in one torchrun launch, each checked against single-process training.

The worker's `--cases FILE` runs the cases one after the other in one process group (one
launch per topology keeps CI cheap); each case writes OUT/<name>/outputs_rank<r>.pt and a
DCP checkpoint. `check_case` compares every step's gathered outputs and the checkpoint's
final parameters with the original model trained in one process on the same global batches.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn
import torch.nn.functional as F

from dmt_fx import Topology
from dmt_fx.jobs.data import clicks
from dmt_fx.jobs.launch import LaunchResult, launch

LR = 0.1


@dataclasses.dataclass
class Case:
    name: str
    target: str  # path/to/file.py:factory
    build: Callable[[], nn.Module]  # the original model, same weights as the target's factory
    make_inputs: Callable[[int, int], tuple]
    plan: dict[str, Any] | None = None  # None: the balanced partitioner
    batch_size: int = 4  # local batch per rank


def run_cases(tmp_path, topology: str, cases: list[Case], *, steps: int, timeout_s: int = 60,
              deadline_s: float = 600) -> LaunchResult:
    out = str(tmp_path / f"cases-{topology}")
    os.makedirs(out, exist_ok=True)
    spec = [{"name": c.name, "args": ["--target", c.target, "--batch-size", str(c.batch_size),
                                      "--save-checkpoint", os.path.join(out, c.name, "ckpt"),
                                      *(["--plan", json.dumps(c.plan)] if c.plan else [])]} for c in cases]
    path = os.path.join(out, "cases.json")
    with open(path, "w") as handle:
        json.dump(spec, handle)
    args = ["--target", cases[0].target, "--topology", topology, "--steps", str(steps), "--lr", str(LR),
            "--out", out, "--timeout-s", str(timeout_s), "--record-outputs", "--cases", path]
    return launch(Topology.parse(topology), args, out, deadline_s=deadline_s, grace_s=30)


def reference(case: Case, world: int, steps: int) -> tuple[list[torch.Tensor], nn.Module]:
    """Single-process SGD training of the original model on the global batches."""
    model = case.build()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    return train_steps(model, optimizer, case.make_inputs, case.batch_size * world, steps), model


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, make_inputs: Callable[[int, int], Any],
                global_batch: int, steps: int) -> list[torch.Tensor]:
    """Train `model` in one process on the job's global batches; each step's outputs."""
    outputs = []
    for step in range(steps):
        inputs = make_inputs(global_batch, step)
        out = model(*inputs)
        outputs.append(out.detach())
        loss = F.binary_cross_entropy_with_logits(out, clicks(inputs, step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return outputs


def gathered_outputs(out_dir: str, world: int) -> list[torch.Tensor]:
    per_rank = [torch.load(os.path.join(out_dir, f"outputs_rank{r}.pt")) for r in range(world)]
    return [torch.cat([per_rank[r][s] for r in range(world)]) for s in range(len(per_rank[0]))]


def check_case(result: LaunchResult, case: Case, world: int, steps: int) -> tuple[float, float]:
    """(max output difference over all steps, max final-parameter difference); asserts both <= 1e-5."""
    out_dir = os.path.join(result.out_dir, case.name)
    expected, trained = reference(case, world, steps)
    got = gathered_outputs(out_dir, world)
    assert len(got) == steps, f"{case.name}: {len(got)} steps recorded"
    out_diff = max((e - g).abs().max().item() for e, g in zip(expected, got))
    fresh = case.build()
    with torch.no_grad():  # other weights: everything must come from the checkpoint
        for p in fresh.parameters():
            p.add_(1.0)
    state = fresh.state_dict()
    dcp.load(state, checkpoint_id=os.path.join(out_dir, "ckpt"))
    want = trained.state_dict()
    assert list(state) == list(want), f"{case.name}: checkpoint keys differ"
    param_diff = max((state[k] - v).abs().max().item() for k, v in want.items())
    assert out_diff <= 1e-5 and param_diff <= 1e-5, f"{case.name}: outputs {out_diff:.3g}, params {param_diff:.3g}"
    return out_diff, param_diff
