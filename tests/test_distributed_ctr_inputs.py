"""NVIDIA DLRM's joint mode, its joint nn.Embedding built with
`sparse=True` gradients, is split by field like the other joint tables (it stayed whole:
`sparse` was counted among the options a per-field row range would not keep).

In one process: outputs and gradients bitwise, the weight's gradient sparse as the
original's, so SparseAdam trains the DMT model as it trains the original. On 2x2 (one torchrun launch): SGD and Adagrad, 5 steps,
every step's outputs and the final parameters equal single-process training of the
original (its sparse gradients) within 1e-5; the job's checkpoint loads into the original.

Tables with padding_idx=0 (a sum bag, a mean bag, an nn.Embedding; `distribute` refused them):
the same 2x2 launch trains them equal to single-process training, row 0 of every table stays
zero in the job's checkpoint, and the original's checkpoint starts a DMT job."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn

import dmt_fx
from dmt_fx.compiler.batch_classes import register_batch_classes
from dmt_fx.runtime.distribute import check_distributable
from tests.harness import training
from tests.harness.cases import gathered_outputs as gathered
from tests.harness.cases import job_diffs
from tests.harness.corpus.joint import FIELD_ROWS
from tests.harness.launch import launch_cases
from tests.harness.targets import dist_ctr_batches, dist_ctr_inputs, dist_ctr_padding

TARGET = dist_ctr_inputs.__file__
PADDED = dist_ctr_padding.__file__
BATCHES = dist_ctr_batches.__file__
TOPOLOGY, B, STEPS, TOLERANCE = "2x2", 4, 5, 1e-5
CASES = [("sparse_joint", "sgd"), ("sparse_joint", "adagrad"), ("padded", "sgd"), ("padded", "adagrad"),
         ("dict_batch", "adagrad")]
SLOW = "adagrad"  # its cases (and the dict batch) launch a second world, slow (default tests <= 60 s)
MODULES = {"sparse_joint": (dist_ctr_inputs, TARGET), "padded": (dist_ctr_padding, PADDED),
           "dict_batch": (dist_ctr_batches, BATCHES)}
PADDED_TABLES = ("sum_bag.weight", "mean_bag.weight", "single.weight")
LOAD = "padded-load"  # the original's checkpoint (3 steps of SGD) loaded by a 1-step job
MAX_DIFFS: dict[str, tuple[float, float]] = {}


def _build(factory: str, seed: int = dist_ctr_inputs.SEED) -> nn.Module:
    return getattr(MODULES[factory][0], factory)(seed)[0]


def train_original(factory: str, optimizer: str, steps: int = STEPS) -> tuple[list[torch.Tensor], nn.Module]:
    model = _build(factory)
    register_batch_classes(MODULES[factory][0].make_inputs(1, 0))  # as capture does: labels read its leaves
    return training.train_original(model, MODULES[factory][0].make_inputs, B * 4, steps, optimizer)


def test_the_sparse_joint_table_splits_by_field_exactly() -> None:
    model, inputs = dist_ctr_inputs.sparse_joint()
    pristine = copy.deepcopy(model)
    gm = dmt_fx.transform(model, TOPOLOGY, example_inputs=inputs)
    result = dmt_fx.dmt_result(gm)
    (fields,) = result.sites.joint_tables().values()
    assert [t.num_embeddings for t in fields] == list(FIELD_ROWS) and not result.plan.warnings
    assert {t.host for t in result.plan.towers if t.features} == {0, 1}
    check_distributable(gm)
    expected, got = pristine(*inputs), gm(*inputs)
    expected.sum().backward()
    got.sum().backward()
    assert torch.equal(expected, got)
    for (name, p), q in zip(pristine.named_parameters(), model.parameters()):
        assert p.grad.is_sparse == q.grad.is_sparse, name  # the layout is the original's too
        want = p.grad.to_dense() if p.grad.is_sparse else p.grad
        assert torch.equal(want, q.grad.to_dense() if q.grad.is_sparse else q.grad), name


def test_sparse_adam_trains_the_split_sparse_joint_table_like_the_original() -> None:
    """SparseAdam refuses dense gradients: it runs on the DMT model only if each field's
    lookup keeps the sparse gradient (passes/sptt.py, field_lookup)."""
    model, inputs = dist_ctr_inputs.sparse_joint()
    pristine = copy.deepcopy(model)
    gm = dmt_fx.transform(model, TOPOLOGY, example_inputs=inputs)
    trained = []
    for net in (pristine, gm):
        sparse = [p for n, p in net.named_parameters() if "embedding" in n]
        dense = [p for n, p in net.named_parameters() if "embedding" not in n]
        opts = [torch.optim.SparseAdam(sparse, lr=0.01), torch.optim.Adam(dense, lr=0.01)]
        outs = []
        for _ in range(3):
            out = net(*inputs)
            out.sum().backward()
            for opt in opts:
                opt.step()
                opt.zero_grad()
            outs.append(out.detach())
        trained.append(outs)
    assert all(torch.equal(a, b) for a, b in zip(*trained))


def _launch(tmp, optimizers: set[str], load: bool):
    """One torchrun launch on 2x2 with the cases of `optimizers` (and the checkpoint load)."""
    cases = [{"name": f"{f}-{o}", "args": ["--target", f"{MODULES[f][1]}:{f}", "--optimizer", o,
                                          "--save-checkpoint", str(tmp / f"{f}-{o}.ckpt")]}
             for f, o in CASES if o in optimizers]
    if load:
        _, trained = train_original("padded", "sgd", steps=3)
        dcp.save(trained.state_dict(), checkpoint_id=str(tmp / "original"))
        cases.append({"name": LOAD, "args": ["--target", f"{PADDED}:padded", "--steps", "1",
                                             "--load-checkpoint", str(tmp / "original")]})
    result = launch_cases(cases, str(tmp / "cases.json"), str(tmp / "out"), TOPOLOGY, target=f"{TARGET}:sparse_joint",
                          steps=STEPS, batch_size=B)
    assert result.ok, result.log_tail(80)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The default cases (SGD, the checkpoint load) in one launch; returns its folder."""
    tmp = tmp_path_factory.mktemp("ctr_inputs")
    _launch(tmp, {"sgd"}, load=True)
    yield tmp
    _report()


def _report() -> None:
    for case, (outputs, params) in MAX_DIFFS.items():
        print(f"  {case:35s} max |diff| outputs {outputs:9.3g} parameters {params:9.3g}")
    MAX_DIFFS.clear()


@pytest.fixture(scope="module")
def launched_slow(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ctr_inputs_slow")
    _launch(tmp, {SLOW}, load=False)
    yield tmp
    _report()


@pytest.mark.distributed
@pytest.mark.parametrize("factory, optimizer", [
    pytest.param(f, o, id=f"{f}-{o}", marks=[pytest.mark.slow] if o == SLOW else []) for f, o in CASES])
def test_training_equals_single_process(request, factory: str, optimizer: str) -> None:
    launched = request.getfixturevalue("launched_slow" if optimizer == SLOW else "launched")
    expected, trained = train_original(factory, optimizer)
    assert len(expected) == STEPS
    outputs, params, state = job_diffs(expected, str(launched / "out" / f"{factory}-{optimizer}"), 4,
                                       _build(factory, seed=123), str(launched / f"{factory}-{optimizer}.ckpt"),
                                       trained.state_dict())
    MAX_DIFFS[f"{factory}-{optimizer}"] = (outputs, params)
    assert outputs <= TOLERANCE and params <= TOLERANCE, (outputs, params)
    if factory == "padded":  # row padding_idx: zero, and no gradient ever reached it
        assert all(not state[name][0].any() for name in PADDED_TABLES)


def test_padded_tables_distribute() -> None:
    model, inputs = dist_ctr_padding.padded()
    check_distributable(dmt_fx.transform(model, TOPOLOGY, example_inputs=inputs))


@pytest.mark.distributed
def test_checkpoint_of_the_original_starts_a_dmt_job(launched) -> None:
    _, trained = train_original("padded", "sgd", steps=3)
    expected = trained(*dist_ctr_padding.make_inputs(B * 4, 0)).detach()
    got = gathered(str(launched / "out" / LOAD), 4)[0]
    diff = float((expected - got).abs().max())
    MAX_DIFFS[f"{LOAD} (first outputs)"] = (diff, 0.0)
    assert diff <= 1e-6, diff
