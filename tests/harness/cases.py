"""(model, plan) cases of a torchrun launch, each checked against single-process training.

`launch.run_cases` runs them one after the other in one launch; each case writes
OUT/<name>/outputs_rank<r>.pt and a DCP checkpoint. `check_case` compares every step's
gathered outputs and the checkpoint's final parameters with the original model trained in
one process on the same global batches (`training.train_steps`); `check_modes_case` does so
against `training.per_rank_reference`. `job_diffs` is the same comparison for a job the
test launched itself.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn

from dmt_fx.jobs.launch import LaunchResult
from tests.harness.equivalence import max_diff
from tests.harness.training import per_rank_reference, train_original


@dataclasses.dataclass
class Case:
    name: str
    target: str  # path/to/file.py:factory
    build: Callable[[], nn.Module]  # the original model, same weights as the target's factory
    make_inputs: Callable[[int, int], tuple]
    plan: dict[str, Any] | None = None  # None: the balanced partitioner
    batch_size: int = 4  # local batch per rank
    args: tuple[str, ...] = ()  # more worker flags


def reference(case: Case, world: int, steps: int) -> tuple[list[torch.Tensor], nn.Module]:
    """Single-process SGD training of the original model on the global batches."""
    return train_original(case.build(), case.make_inputs, case.batch_size * world, steps)


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


def check_modes_case(result: LaunchResult, case: Case, world: int, steps: int, eval_steps: int,
                     training: bool | None) -> dict[str, float]:
    """Every step's outputs, the eval outputs, each rank's buffers and dense weights, and the
    checkpoint (weights; each buffer one rank's) against `per_rank_reference`, within 1e-5."""
    out_dir = os.path.join(result.out_dir, case.name)
    expected, expected_eval, trained, buffers = per_rank_reference(case, world, steps, eval_steps, training)
    got = gathered_outputs(out_dir, world)
    got_eval = gathered_outputs(out_dir, world, "eval_outputs")
    assert len(got) == steps and len(got_eval) == eval_steps, f"{case.name}: {len(got)}, {len(got_eval)} recorded"
    diffs = {"outputs": max_diff(expected, got), "eval_outputs": max_diff(expected_eval, got_eval)}
    want = trained.state_dict()
    for rank in range(world):
        state = torch.load(os.path.join(out_dir, f"state_rank{rank}.pt"))
        assert set(buffers[rank]) <= set(state), f"{case.name}: rank {rank} lacks {set(buffers[rank]) - set(state)}"
        diffs["buffers"] = max(diffs.get("buffers", 0.0), max_diff(list(buffers[rank].values()),
                                                                    [state[n] for n in buffers[rank]]))
        dense = [n for n in state if n in want and n not in buffers[rank]]
        diffs["dense"] = max(diffs.get("dense", 0.0), max_diff([want[n] for n in dense], [state[n] for n in dense]))
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
    worst = max_diff([want[k] for k in params], [state[k] for k in params])
    for name in buffers[0]:  # a replicated buffer is saved once, from one of the ranks
        worst = max(worst, min(max_diff([b[name]], [state[name]]) for b in buffers))
    return worst


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
