"""DMT on real gloo process groups, launched by torchrun with one agent per emulated host.

Equivalence: DMT (identity tower modules) trained on H x L ranks equals single-process
training of the original model on the same global batches: every step's outputs and the
final parameters (read back from the DMT job's torch.distributed.checkpoint) within 1e-5.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F

from dmt_fx import Topology
from dmt_fx.data import clicks
from dmt_fx.launch import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, STEPS, LR = 4, 5, 0.1


def target(name: str) -> str:
    return f"{ROOT}/examples/{name}.py:build"


def run_dmt(tmp_path, name: str, topology: str, *extra: str, worker_topology: str | None = None):
    out = str(tmp_path / f"{name}-{topology}")
    args = ["--target", target(name), "--topology", worker_topology or topology, "--steps", str(STEPS),
            "--batch-size", str(B), "--lr", str(LR), "--out", out, "--timeout-s", "60", *extra]
    return launch(Topology.parse(topology), args, out, deadline_s=240, grace_s=60)


def reference(name: str, world: int, steps: int = STEPS, model=None):
    """Single-process training of the original model on the global batches."""
    module = importlib.import_module(f"examples.{name}")
    model = model if model is not None else module.build()[0]
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    outputs = []
    for step in range(steps):
        inputs = module.make_inputs(B * world, step)
        out = model(*inputs)
        outputs.append(out.detach())
        loss = F.binary_cross_entropy_with_logits(out, clicks(inputs, step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return outputs, model


def gathered_outputs(out_dir: str, world: int) -> list[torch.Tensor]:
    per_rank = [torch.load(os.path.join(out_dir, f"outputs_rank{r}.pt")) for r in range(world)]
    return [torch.cat([per_rank[r][s] for r in range(world)]) for s in range(len(per_rank[0]))]


def load_checkpoint_into_original(name: str, path: str):
    module = importlib.import_module(f"examples.{name}")
    model = module.build(seed=123)[0]  # different weights: everything must come from the checkpoint
    state = model.state_dict()
    dcp.load(state, checkpoint_id=path)
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("name, topology, sharding", [
    ("torchrec_dlrm", "2x2", "table_wise"),
    ("torchrec_dlrm", "2x2", "row_wise"),
    ("torchrec_dlrm", "2x2", "column_wise"),
    ("torchrec_dlrm", "4x1", "table_wise"),
    ("torchrec_dlrm", "1x4", "row_wise"),
    ("two_collections", "2x2", "table_wise"),
    ("weighted_shared", "2x2", "table_wise"),
])
def test_dmt_training_equals_single_process(tmp_path, name: str, topology: str, sharding: str) -> None:
    world = Topology.parse(topology).world_size
    ckpt = str(tmp_path / "ckpt")
    result = run_dmt(tmp_path, name, topology, "--record-outputs", "--save-checkpoint", ckpt, "--sharding", sharding)
    assert result.ok, result.log_tail()
    expected, trained = reference(name, world)
    got = gathered_outputs(result.out_dir, world)
    assert len(got) == STEPS
    for step, (e, g) in enumerate(zip(expected, got)):
        assert torch.allclose(e, g, rtol=0, atol=1e-5), f"step {step}: max diff {(e - g).abs().max()}"
    # The DMT job's checkpoint loads into the single-process original: final parameters.
    loaded = load_checkpoint_into_original(name, ckpt)
    reference_state = trained.state_dict()
    assert list(loaded.state_dict()) == list(reference_state)
    for key, value in loaded.state_dict().items():
        assert torch.allclose(value, reference_state[key], rtol=0, atol=1e-5), key
    losses = result.ranks()[0]["losses"]
    assert len(losses) == STEPS and all(l == l for l in losses)


def test_checkpoint_from_single_process_loads_into_dmt(tmp_path) -> None:
    """The reverse direction: a checkpoint of the original model starts a DMT job exactly."""
    _, trained = reference("torchrec_dlrm", 4, steps=3)
    ckpt = str(tmp_path / "original")
    dcp.save(trained.state_dict(), checkpoint_id=ckpt)
    result = run_dmt(tmp_path, "torchrec_dlrm", "2x2", "--record-outputs", "--load-checkpoint", ckpt)
    assert result.ok, result.log_tail()
    module = importlib.import_module("examples.torchrec_dlrm")
    expected = trained(*module.make_inputs(B * 4, 0)).detach()
    got = gathered_outputs(result.out_dir, 4)[0]
    assert torch.allclose(expected, got, rtol=0, atol=1e-6), (expected - got).abs().max()


def test_topology_mismatch_fails_on_every_rank_before_any_collective(tmp_path) -> None:
    result = run_dmt(tmp_path, "torchrec_dlrm", "1x4", worker_topology="2x2")
    assert not result.ok and not result.timed_out
    log = result.log_tail(200)
    assert log.count("expected: topology 2x2: 2 hosts x 2 ranks = 4 ranks with LOCAL_WORLD_SIZE 2") == 4
    assert result.seconds < 60


def test_a_dead_rank_makes_the_others_exit_with_a_message(tmp_path) -> None:
    result = run_dmt(tmp_path, "torchrec_dlrm", "2x2", "--kill-rank", "3", "--kill-step", "2")
    assert not result.timed_out, "the launcher had to kill a hung job"
    assert all(code != 0 for code in result.returncodes), result.returncodes
    assert result.seconds < 120
    log = result.log_tail(300)
    assert "dmt-fx worker rank" in log and "failed" in log, log
