"""DMT on real gloo process groups, launched by torchrun with one agent per emulated host.

Equivalence: DMT (identity tower modules) trained on H x L ranks equals single-process
training of the original model on the same global batches: every step's outputs and the
final parameters (read back from the DMT job's torch.distributed.checkpoint) within 1e-5.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.distributed.checkpoint as dcp

import dmt_fx
from dmt_fx import Topology
from tests.harness.launch import launch_job
from tests.harness.zoo import STEPS, B, gathered_outputs, load_checkpoint_into_original, reference, run_example, target

pytestmark = pytest.mark.distributed  # every test here starts processes


@pytest.mark.parametrize("name, topology, sharding", [
    ("torchrec_dlrm", "2x2", "table_wise"),
    ("torchrec_dlrm", "2x2", "row_wise"),
    ("torchrec_dlrm", "2x2", "column_wise"),
    ("torchrec_dlrm", "4x1", "table_wise"),
    # hosts of one rank with several tables: their lookups skip TorchRec's dists (exchange.py)
    ("two_collections", "2x1", "table_wise"),
    ("weighted_shared", "2x1", "table_wise"),
    ("torchrec_dlrm", "1x4", "row_wise"),
    ("two_collections", "2x2", "table_wise"),
    ("weighted_shared", "2x2", "table_wise"),
])
def test_dmt_training_equals_single_process(tmp_path, name: str, topology: str, sharding: str) -> None:
    world = Topology.parse(topology).world_size
    ckpt = str(tmp_path / "ckpt")
    result = run_example(tmp_path, name, topology, "--record-outputs", "--profile-steps", "0", "--save-checkpoint", ckpt, "--sharding", sharding)
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
    result = run_example(tmp_path, "torchrec_dlrm", "2x2", "--record-outputs", "--profile-steps", "0", "--load-checkpoint", ckpt)
    assert result.ok, result.log_tail()
    module = importlib.import_module("examples.torchrec_dlrm")
    expected = trained(*module.make_inputs(B * 4, 0)).detach()
    got = gathered_outputs(result.out_dir, 4)[0]
    assert torch.allclose(expected, got, rtol=0, atol=1e-6), (expected - got).abs().max()


def test_topology_mismatch_fails_on_every_rank_before_any_collective(tmp_path) -> None:
    result = run_example(tmp_path, "torchrec_dlrm", "1x4", worker_topology="2x2")
    assert not result.ok and not result.timed_out
    log = result.log_tail(200)
    assert log.count("expected: topology 2x2: 2 hosts x 2 ranks = 4 ranks with LOCAL_WORLD_SIZE 2") == 4
    assert result.seconds < 60


def test_a_dead_rank_makes_the_others_exit_with_a_message(tmp_path) -> None:
    result = run_example(tmp_path, "torchrec_dlrm", "2x2", "--kill-rank", "3", "--kill-step", "2")
    assert not result.timed_out, "the launcher had to kill a hung job"
    assert all(code != 0 for code in result.returncodes), result.returncodes
    assert result.seconds < 120
    log = result.log_tail(300)
    assert "dmt-fx worker rank" in log and "failed" in log, log


def _reference_dmt_tm(name: str, topology: str, kind: str, c: int, world: int):
    """The logical DMT model with tower modules, trained in one process on the global batches."""
    module = importlib.import_module(f"examples.{name}")
    model, inputs = module.build()
    torch.manual_seed(0)  # as the worker does before transform
    gm = dmt_fx.transform(model, topology, example_inputs=inputs, tower_module=kind, compression=c)
    return reference(name, world, model=gm)


@pytest.mark.parametrize("name, topology, kind, c", [
    ("torchrec_dlrm", "2x2", "dot", 2),
    ("two_collections", "2x2", "linear", 4),
    ("torchrec_dlrm", "2x1", "linear", 4),  # one rank per host: the tower module runs without DDP
])
def test_tower_modules_distributed_equal_the_logical_model(tmp_path, name, topology, kind, c) -> None:
    """Tower modules run data-parallel inside their host; the DMT-TM model trained on the world
    equals the same logical model trained in one process."""
    world = Topology.parse(topology).world_size
    ckpt = str(tmp_path / "ckpt")
    result = run_example(tmp_path, name, topology, "--record-outputs", "--profile-steps", "0", "--tower-module", kind,
                     "--compression", str(c), "--save-checkpoint", ckpt)
    assert result.ok, result.log_tail()
    expected, trained = _reference_dmt_tm(name, topology, kind, c, world)
    for step, (e, g) in enumerate(zip(expected, gathered_outputs(result.out_dir, world))):
        assert torch.allclose(e, g, rtol=0, atol=1e-5), f"step {step}: max diff {(e - g).abs().max()}"
    # The checkpoint (tables, tower modules, rebuilt layers) loads into the logical model.
    module = importlib.import_module(f"examples.{name}")
    fresh_model, inputs = module.build(seed=123)
    torch.manual_seed(123)
    fresh = dmt_fx.transform(fresh_model, topology, example_inputs=inputs, tower_module=kind, compression=c,
                             plan=dmt_fx.tower_plan(trained))  # other inputs could change the plan
    state = fresh.state_dict()
    assert list(state) == list(trained.state_dict())
    dcp.load(state, checkpoint_id=ckpt)
    for key, value in trained.state_dict().items():
        assert torch.allclose(state[key], value, rtol=0, atol=1e-5), key


def test_tower_modules_cut_cross_host_embedding_bytes_by_c(tmp_path) -> None:
    """two_collections: 40 pooled columns in 2 towers; linear tower modules with c = 4 send 10."""
    bytes_by_c = {}
    for c in (1, 4):
        extra = ("--tower-module", "linear", "--compression", str(c)) if c > 1 else ()
        result = run_example(tmp_path / f"c{c}", "two_collections", "2x2", *extra)
        assert result.ok, result.log_tail()
        bytes_by_c[c] = sum(r["traffic"]["cross_host_embedding_bytes"] for r in result.ranks())
    assert bytes_by_c[4] == pytest.approx(bytes_by_c[1] / 4, rel=0.05), bytes_by_c


def test_a_rank_that_stops_answering_is_named(tmp_path, monkeypatch) -> None:
    """SIGSTOP rank 3 at step 2: the others hit the collective timeout (10 s here) and fail with
    a message, and the launcher names rank 3 as the one that stopped answering."""
    monkeypatch.setenv("DMT_FX_FAULT", "rank=3,step=2,signal=STOP")
    out = str(tmp_path / "stop")
    args = ["--target", target("torchrec_dlrm"), "--topology", "2x2", "--steps", "6", "--batch-size", str(B),
            "--out", out, "--timeout-s", "10"]
    result = launch_job("2x2", args, out, deadline_s=120, grace_s=30)
    assert not result.ok and not result.timed_out
    assert result.unresponsive_ranks == [3], result.unresponsive_ranks
    assert "dmt-fx worker rank" in result.log_tail(300)
    assert result.seconds < 90
