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
from dmt_fx.jobs.data import clicks, slice_batch
from dmt_fx.jobs.launch import LaunchResult, launch
from dmt_fx.jobs.modes import step_seed
from dmt_fx.jobs.steps import batch_of

LR = 0.1


@dataclasses.dataclass
class Case:
    name: str
    target: str  # path/to/file.py:factory
    build: Callable[[], nn.Module]  # the original model, same weights as the target's factory
    make_inputs: Callable[[int, int], tuple]
    plan: dict[str, Any] | None = None  # None: the balanced partitioner
    batch_size: int = 4  # local batch per rank
    args: tuple[str, ...] = ()  # more worker flags


def run_cases(tmp_path, topology: str, cases: list[Case], *, steps: int, timeout_s: int = 60,
              deadline_s: float = 600) -> LaunchResult:
    out = str(tmp_path / f"cases-{topology}")
    os.makedirs(out, exist_ok=True)
    spec = [{"name": c.name, "args": ["--target", c.target, "--batch-size", str(c.batch_size),
                                      "--save-checkpoint", os.path.join(out, c.name, "ckpt"),
                                      *(["--plan", json.dumps(c.plan)] if c.plan else []), *c.args]}
            for c in cases]
    path = os.path.join(out, "cases.json")
    with open(path, "w") as handle:
        json.dump(spec, handle)
    args = ["--target", cases[0].target, "--topology", topology, "--steps", str(steps), "--lr", str(LR),
            "--out", out, "--timeout-s", str(timeout_s), "--record-outputs", "--profile-steps", "0", "--cases", path]
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


def gathered_outputs(out_dir: str, world: int, kind: str = "outputs") -> list[torch.Tensor]:
    per_rank = [torch.load(os.path.join(out_dir, f"{kind}_rank{r}.pt")) for r in range(world)]
    return [torch.cat([per_rank[r][s] for r in range(world)]) for s in range(len(per_rank[0]))]


def check_case(result: LaunchResult, case: Case, world: int, steps: int) -> tuple[float, float]:
    """(max output difference over all steps, max final-parameter difference); asserts both <= 1e-5."""
    out_dir = os.path.join(result.out_dir, case.name)
    expected, trained = reference(case, world, steps)
    got = gathered_outputs(out_dir, world)
    assert len(got) == steps, f"{case.name}: {len(got)} steps recorded"
    out_diff = max((e - g).abs().max().item() for e, g in zip(expected, got))
    want = trained.state_dict()
    state = loaded_checkpoint(case, out_dir, want)
    param_diff = max((state[k] - v).abs().max().item() for k, v in want.items())
    assert out_diff <= 1e-5 and param_diff <= 1e-5, f"{case.name}: outputs {out_diff:.3g}, params {param_diff:.3g}"
    return out_diff, param_diff


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


def check_modes_case(result: LaunchResult, case: Case, world: int, steps: int, eval_steps: int,
                     training: bool | None) -> dict[str, float]:
    """Every step's outputs, the eval outputs, each rank's buffers and dense weights, and the
    checkpoint (weights; each buffer one rank's) against `per_rank_reference`, within 1e-5."""
    out_dir = os.path.join(result.out_dir, case.name)
    expected, expected_eval, trained, buffers = per_rank_reference(case, world, steps, eval_steps, training)
    got = gathered_outputs(out_dir, world)
    got_eval = gathered_outputs(out_dir, world, "eval_outputs")
    assert len(got) == steps and len(got_eval) == eval_steps, f"{case.name}: {len(got)}, {len(got_eval)} recorded"
    diffs = {"outputs": _max_diff(expected, got), "eval_outputs": _max_diff(expected_eval, got_eval)}
    want = trained.state_dict()
    for rank in range(world):
        state = torch.load(os.path.join(out_dir, f"state_rank{rank}.pt"))
        assert set(buffers[rank]) <= set(state), f"{case.name}: rank {rank} lacks {set(buffers[rank]) - set(state)}"
        diffs["buffers"] = max(diffs.get("buffers", 0.0), _max_diff(list(buffers[rank].values()),
                                                                    [state[n] for n in buffers[rank]]))
        dense = [n for n in state if n in want and n not in buffers[rank]]
        diffs["dense"] = max(diffs.get("dense", 0.0), _max_diff([want[n] for n in dense], [state[n] for n in dense]))
    diffs["checkpoint"] = _checkpoint_diff(case, out_dir, want, buffers)
    assert max(diffs.values()) <= 1e-5, f"{case.name}: {diffs}"
    return diffs


def loaded_checkpoint(case: Case, out_dir: str, want: dict) -> dict:
    """The case's DCP checkpoint loaded into a fresh original model whose weights were moved
    off (everything must come from the checkpoint); its keys must be `want`'s, in order."""
    fresh = case.build()
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    state = fresh.state_dict()
    dcp.load(state, checkpoint_id=os.path.join(out_dir, "ckpt"))
    assert list(state) == list(want), f"{case.name}: checkpoint keys differ"
    return state


def _checkpoint_diff(case: Case, out_dir: str, want: dict, buffers: list[dict]) -> float:
    state = loaded_checkpoint(case, out_dir, want)
    params = [k for k in want if k not in buffers[0]]
    worst = _max_diff([want[k] for k in params], [state[k] for k in params])
    for name in buffers[0]:  # a replicated buffer is saved once, from one of the ranks
        worst = max(worst, min(_max_diff([b[name]], [state[name]]) for b in buffers))
    return worst


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b)), "different structure"
    return max([(x.double() - y.double()).abs().max().item() for x, y in zip(a, b) if x.numel()] or [0.0])


def job_diffs(expected: list[torch.Tensor], out_dir: str, world: int, fresh: nn.Module, checkpoint: str,
              want: dict) -> tuple[float, float, dict]:
    """(max output difference over the job's steps, max difference of the job's checkpoint
    loaded into `fresh` (weights moved off) against `want`, the loaded state); the keys and
    the number of steps must match."""
    got = gathered_outputs(out_dir, world)
    assert len(got) == len(expected), f"{len(got)} of {len(expected)} steps recorded"
    outputs = max(float((e - g).abs().max()) for e, g in zip(expected, got))
    state = fresh.state_dict()
    dcp.load(state, checkpoint_id=checkpoint)
    assert list(state) == list(want), "checkpoint keys differ"
    params = max(float((state[k].float() - v.float()).abs().max()) for k, v in want.items())
    return outputs, params, state
