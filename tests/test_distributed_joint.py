"""Joint tables split by field on a real world: each field's row range is a
TorchRec table on its tower's host (ids minus the field's offset, the original rows), and
training on 2x2 equals single-process training of the original (SGD and Adagrad, 5 steps,
every step's outputs and the final parameters within 1e-5). Checkpoints both ways: the DMT
job's DCP checkpoint (the joint weight one key, a ShardedTensor over the world) loads into
the original, and the original's checkpoint starts a DMT job."""

from __future__ import annotations

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn

import dmt_fx
from dmt_fx.runtime.distribute import check_distributable
from tests.harness import training
from tests.harness.cases import gathered_outputs as gathered
from tests.harness.cases import job_diffs
from tests.harness.corpus.joint import make_inputs
from tests.harness.launch import launch_cases
from tests.harness.targets import dist_joint

TARGET = dist_joint.__file__
TOPOLOGY, B, STEPS, TOLERANCE = "2x2", 4, 5, 1e-5
CASES = [("nvidia_joint", "sgd"), ("nvidia_joint", "adagrad"), ("symbolic_joint", "sgd"),
         ("symbolic_joint", "adagrad")]
LOAD = "nvidia_joint-load"  # the original's checkpoint (3 steps of SGD) loaded by a 1-step job
MAX_DIFFS: dict[str, tuple[float, float]] = {}


def _build(factory: str, seed: int = dist_joint.SEED) -> nn.Module:
    return getattr(dist_joint, factory)(seed)[0]


def train_original(factory: str, optimizer: str, steps: int = STEPS) -> tuple[list[torch.Tensor], nn.Module]:
    """Single-process training of the original on the global batches the job sees."""
    model = _build(factory)
    return training.train_original(model, make_inputs, B * 4, steps, optimizer)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One torchrun launch on 2x2 with every case; returns its folder."""
    tmp = tmp_path_factory.mktemp("joint")
    _, trained = train_original("nvidia_joint", "sgd", steps=3)
    dcp.save(trained.state_dict(), checkpoint_id=str(tmp / "original"))
    cases = [{"name": f"{f}-{o}", "args": ["--target", f"{TARGET}:{f}", "--optimizer", o,
                                          "--save-checkpoint", str(tmp / f"{f}-{o}.ckpt")]} for f, o in CASES]
    cases.append({"name": LOAD, "args": ["--target", f"{TARGET}:nvidia_joint", "--steps", "1",
                                         "--load-checkpoint", str(tmp / "original")]})
    result = launch_cases(cases, str(tmp / "cases.json"), str(tmp / "out"), TOPOLOGY, target=f"{TARGET}:nvidia_joint",
                          steps=STEPS, batch_size=B)
    assert result.ok, result.log_tail(80)
    yield tmp
    for case, (outputs, params) in MAX_DIFFS.items():
        print(f"  {case:35s} max |diff| outputs {outputs:9.3g} parameters {params:9.3g}")


def test_the_joint_table_is_split_over_both_hosts() -> None:
    """Guards the cases below: the plan spreads the fields of the one weight over the hosts,
    and distribute accepts the model (dims multiples of 4, field lookups on [B] ids)."""
    for factory in ("nvidia_joint", "symbolic_joint"):
        model, inputs = getattr(dist_joint, factory)()
        gm = dmt_fx.transform(model, TOPOLOGY, example_inputs=inputs)
        check_distributable(gm)
        result = dmt_fx.dmt_result(gm)
        assert len(result.sites.joint_tables()) == 1
        assert {t.host for t in result.plan.towers if t.features} == {0, 1}


@pytest.mark.distributed
@pytest.mark.parametrize("factory, optimizer", CASES, ids=[f"{f}-{o}" for f, o in CASES])
def test_joint_training_equals_single_process(launched, factory: str, optimizer: str) -> None:
    expected, trained = train_original(factory, optimizer)
    assert len(expected) == STEPS
    # The job's checkpoint (the joint weight under its one original key) into the original.
    outputs, params, _ = job_diffs(expected, str(launched / "out" / f"{factory}-{optimizer}"), 4,
                                   _build(factory, seed=123), str(launched / f"{factory}-{optimizer}.ckpt"),
                                   trained.state_dict())
    MAX_DIFFS[f"{factory}-{optimizer}"] = (outputs, params)
    assert outputs <= TOLERANCE and params <= TOLERANCE, (outputs, params)


@pytest.mark.distributed
def test_checkpoint_of_the_original_starts_a_dmt_job(launched) -> None:
    _, trained = train_original("nvidia_joint", "sgd", steps=3)
    expected = trained(*make_inputs(B * 4, 0)).detach()
    got = gathered(str(launched / "out" / LOAD), 4)[0]
    diff = float((expected - got).abs().max())
    MAX_DIFFS[f"{LOAD} (first outputs)"] = (diff, 0.0)
    assert diff <= 1e-6, diff
