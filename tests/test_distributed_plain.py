"""Plain PyTorch lookups (nn.EmbeddingBag / nn.Embedding, symbolic and export capture) on
TorchRec's sharded tables, on real gloo worlds launched by torchrun (one agent per host).

One launch per topology runs several cases (the worker's `--cases`, a fresh default group
each). Models: the reference DLRM (export route, flat id lists + offsets), the NVIDIA-style
model (symbolic route, one nn.Embedding per column of a [B, F] index, one sparse=True
table), `plain_embedding` (flat ids + offsets, mean pooling, nn.Embedding on [B, 1] ids,
its own `slice_inputs`) and `plain_mixed` (tables of dims 4/16/8/12 each projected to a
common dim by an nn.Linear; mean pooling, per-sample weights, nn.Embedding on [B, 1],
sparse=True; `build_small`: 2 tables, fewer than the 4x1 world has hosts).
  2x2: every model with SGD and Adagrad where the launch allows, checkpoints both ways,
       linear tower modules (c = 2) on the reference DLRM;
  4x1: one table per host, hosts without tables, the export route;
  2x1: a plan that puts a single table on a host, the NVIDIA-style model;
  1x4: every table on one host, sharded table-wise over its 4 ranks (@slow: ~50 s).
Every step's outputs and the final parameters (read back from the DMT job's DCP checkpoint
into the single-process original) must be within 1e-5 of the original trained in one
process on the same global batches. The refusals are checked without torchrun.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from typing import Any, Callable

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.fx as fx
import torch.nn as nn

import dmt_fx
from dmt_fx import Topology
from dmt_fx.ir.errors import DMTError
from dmt_fx.runtime.distribute import check_distributable
from dmt_fx.runtime.plain import PlainKJT, plain_groups, plain_lookups
from tests.harness import training
from tests.harness.cases import gathered_outputs as gathered
from tests.harness.launch import launch_cases, launch_job
from tests.harness.random_models import (
    CollectionSpec,
    TableSpec,
    TorchRecSpec,
    build_torchrec_model,
    make_torchrec_inputs,
)
from tests.harness.training import LR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, STEPS = 4, 5
TOLERANCE = 1e-5
MAX_DIFFS: dict[str, tuple[float, float]] = {}  # "topology case" -> (outputs, parameters)


@dataclasses.dataclass(frozen=True)
class Job:
    """One case of a launch: the TARGET factory `model` (examples/<file>.py:<factory>)."""

    model: str  # file:factory
    optimizer: str = "sgd"
    plan: tuple[tuple[str, ...], ...] | None = None  # per host, the features of its one tower

    @property
    def name(self) -> str:
        return f"{self.model.replace(':', '.')}-{self.optimizer}" + ("-plan" if self.plan else "")

    def args(self, topology: str, tmp) -> list[str]:
        file, factory = self.model.split(":")
        args = ["--target", f"{ROOT}/examples/{file}.py:{factory}", "--optimizer", self.optimizer,
                "--save-checkpoint", str(tmp / f"{topology}-{self.name}.ckpt")]
        return args + (["--plan", json.dumps(self.plan_json(topology))] if self.plan else [])

    def plan_json(self, topology: str) -> dict | None:
        if not self.plan:
            return None
        towers = [{"host": h, "features": list(f)} for h, f in enumerate(self.plan) if f]
        return {"topology": topology, "towers": towers}


REF, NVIDIA, PLAIN, MIXED, SMALL = "reference_dlrm:build", "nvidia_dlrm:build", "plain_embedding:build", \
    "plain_mixed:build", "plain_mixed:build_small"
JOBS: dict[str, list[Job]] = {
    "2x2": [Job(REF), Job(REF, "adagrad"), Job(NVIDIA), Job(NVIDIA, "adagrad"), Job(MIXED), Job(PLAIN, "adagrad")],
    # Balanced plans: MIXED puts one table per host; SMALL leaves hosts 2 and 3 without tables.
    "4x1": [Job(MIXED, "adagrad"), Job(SMALL), Job(REF), Job(PLAIN)],
    # A single table (the sparse nn.Embedding on [B, 1]) alone on host 0.
    "2x1": [Job(MIXED, "sgd", (("user",), ("recent", "item", "geo"))), Job(NVIDIA, "adagrad")],
    "1x4": [Job(MIXED)],  # ~50 s for one case (4 ranks on one host): slow
}
SLOW = {"1x4"}
CASES = [pytest.param(topology, job, id=f"{topology}-{job.name}",
                      marks=[pytest.mark.slow] if topology in SLOW else [])
         for topology, jobs in JOBS.items() for job in jobs]


def factory(model: str) -> tuple[Any, Callable[..., tuple[nn.Module, Any]]]:
    file, name = model.split(":")
    module = importlib.import_module(f"examples.{file}")
    return module, getattr(module, name)


def make_inputs(model: str) -> Callable[[int, int], Any]:
    """The batches the worker makes: the factory's make_inputs, else the module's."""
    module, build = factory(model)
    return getattr(build, "make_inputs", None) or module.make_inputs


def train_original(model_name: str, optimizer: str, world: int, model: nn.Module | None = None,
                   steps: int = STEPS) -> tuple[list[torch.Tensor], nn.Module]:
    """Single-process training of the original model on the global batches the job sees."""
    model = model if model is not None else factory(model_name)[1]()[0]
    return training.train_original(model, make_inputs(model_name), B * world, steps, optimizer)


def max_diff(expected: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    assert len(expected) == len(got), (len(expected), len(got))
    return max(float((e - g).abs().max()) for e, g in zip(expected, got))


def state_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert list(a) == list(b), (list(a), list(b))
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def checkpoint_into_original(model: str, path: str) -> dict[str, torch.Tensor]:
    original = factory(model)[1](seed=123)[0]  # other weights: everything must come from the checkpoint
    state = original.state_dict()
    dcp.load(state, checkpoint_id=path)
    original.load_state_dict(state)
    return original.state_dict()


def extra_cases(tmp) -> list[dict]:
    """2x2 only: the original's checkpoint loaded by a job, and linear tower modules."""
    out = [{"name": f"{model}-load", "args": ["--target", f"{ROOT}/examples/{model.split(':')[0]}.py:build",
                                               "--steps", "1", "--load-checkpoint", str(tmp / f"{model}.original")]}
           for model in (REF, NVIDIA)]
    out.append({"name": "linear", "args": ["--target", f"{ROOT}/examples/reference_dlrm.py:build",
                                           "--tower-module", "linear", "--compression", "2"]})
    return out


def run_launch(topology: str, tmp) -> None:
    cases = [{"name": job.name, "args": job.args(topology, tmp)} for job in JOBS[topology]]
    if topology == "2x2":
        for model in (REF, NVIDIA):
            _, trained = train_original(model, "sgd", 4, steps=3)
            dcp.save(trained.state_dict(), checkpoint_id=str(tmp / f"{model}.original"))
        cases += extra_cases(tmp)
    result = launch_cases(cases, str(tmp / f"cases-{topology}.json"), str(tmp / f"out-{topology}"), topology,
                          target=f"{ROOT}/examples/{REF.split(':')[0]}.py:build", steps=STEPS, batch_size=B)
    assert result.ok, result.log_tail(80)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """topology -> the folder of its one torchrun launch (launched on first use)."""
    tmp, done = tmp_path_factory.mktemp("plain"), set()

    def launched(topology: str):
        if topology not in done:
            done.add(topology)
            run_launch(topology, tmp)
        return tmp

    yield launched
    if MAX_DIFFS:
        print("\nmax |diff| vs single-process training (outputs, parameters):")
        for case, (outputs, params) in MAX_DIFFS.items():
            print(f"  {case:45s} {outputs:9.3g} {params:9.3g}")


@pytest.mark.distributed
@pytest.mark.parametrize("topology, job", CASES)
def test_plain_training_equals_single_process(jobs, topology: str, job: Job) -> None:
    tmp, world = jobs(topology), Topology.parse(topology).world_size
    expected, trained = train_original(job.model, job.optimizer, world)
    outputs = max_diff(expected, gathered(str(tmp / f"out-{topology}" / job.name), world))
    # The DMT job's checkpoint (original keys, tables as ShardedTensors) loads into the original.
    params = state_diff(checkpoint_into_original(job.model, str(tmp / f"{topology}-{job.name}.ckpt")),
                        trained.state_dict())
    MAX_DIFFS[f"{topology} {job.name}"] = (outputs, params)
    print(f"{topology} {job.name}: max |diff| outputs {outputs:.3g}, parameters {params:.3g}")
    assert outputs <= TOLERANCE and params <= TOLERANCE, (outputs, params)


def test_plans_of_the_4x1_and_2x1_cases() -> None:
    """The 4x1 cases leave hosts without tables and the 2x1 plan a single table on a host
    (guards the cases above against a partitioner change)."""
    def hosts(model: str, topology: str, plan: dict | None = None) -> dict[int, tuple[str, ...]]:
        original, inputs = factory(model)[1]()
        gm = dmt_fx.transform(original, topology, example_inputs=inputs, plan=plan)
        return {t.host: t.features for t in dmt_fx.tower_plan(gm).towers}

    assert [len(f) for f in hosts(MIXED, "4x1").values()] == [1, 1, 1, 1]
    assert len(hosts(SMALL, "4x1")) == 2
    assert hosts(MIXED, "2x1", JOBS["2x1"][0].plan_json("2x1"))[0] == ("user",)


@pytest.mark.distributed
@pytest.mark.parametrize("model", [REF, NVIDIA])
def test_checkpoint_of_the_original_starts_a_dmt_job(jobs, model: str) -> None:
    """The reverse direction: the single-process original's DCP checkpoint, loaded by the job."""
    tmp = jobs("2x2")
    _, trained = train_original(model, "sgd", 4, steps=3)
    expected = trained(*make_inputs(model)(B * 4, 0)).detach()
    got = gathered(str(tmp / "out-2x2" / f"{model}-load"), 4)[0]
    diff = float((expected - got).abs().max())
    MAX_DIFFS[f"2x2 {model}-load (first outputs)"] = (diff, 0.0)
    assert diff <= 1e-6, diff


@pytest.mark.distributed
def test_tower_modules_on_a_plain_model(jobs) -> None:
    """Linear tower modules (c = 2) on the reference DLRM: the job equals the logical DMT-TM
    model trained in one process."""
    tmp = jobs("2x2")
    model, inputs = factory(REF)[1]()
    torch.manual_seed(0)  # as the worker does before transform
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module="linear", compression=2)
    expected, _ = train_original(REF, "sgd", 4, model=gm)
    diff = max_diff(expected, gathered(str(tmp / "out-2x2" / "linear"), 4))
    MAX_DIFFS["2x2 reference_dlrm linear c=2 (outputs)"] = (diff, 0.0)
    assert diff <= TOLERANCE, diff


# ---------------------------------------------------------------- refused before any collective


class _Bag(nn.Module):
    def __init__(self, **options) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(20, 4, **options)
        self.dense = nn.Linear(3, 4)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.dense(dense), self.bag(ids, offsets)], dim=1).sum(1, keepdim=True)


class _Sequence(nn.Module):
    """nn.Embedding on [B, L] ids: a [B, L, D] sequence, which a pooled table cannot return."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Embedding(20, 4)
        self.dense = nn.Linear(3, 4)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.dense(dense), self.seq(ids).sum(1)], dim=1).sum(1, keepdim=True)


def assert_names_module_and_fix(error: DMTError, module: str, says: str) -> None:
    text = str(error)
    assert says in error.found and repr(module) in error.found, text
    assert error.fixes and any(repr(module) in fix for fix in error.fixes), text
    assert "Possible solutions:" in text, text


@pytest.mark.parametrize("options, says", [
    ({"mode": "max"}, "mode='max'"),
    ({"max_norm": 1.0}, "max_norm=1.0"),
    ({"scale_grad_by_freq": True}, "scale_grad_by_freq=True"),
])
def test_what_torchrec_cannot_compute_is_refused_by_name(options: dict, says: str) -> None:
    inputs = (torch.rand(4, 3), torch.tensor([1, 2, 3, 4, 5]), torch.tensor([0, 2, 3, 3]))
    gm = dmt_fx.transform(_Bag(**options), "2x1", example_inputs=inputs)
    assert isinstance(gm, fx.GraphModule)
    with pytest.raises(DMTError) as info:
        check_distributable(gm)
    assert_names_module_and_fix(info.value, "bag", says)


def test_sequence_outputs_are_refused_by_name() -> None:
    """Symbolic capture keeps no shapes: a transform without example inputs plans the lookup
    pooled, and the rank's PlainKJT refuses [B, L] ids before the peer exchange (every rank
    stops there), naming the fix: example inputs, with which the lookup runs as a sequence
    (tests/test_distributed_sequences.py)."""
    inputs = (torch.rand(4, 3), torch.randint(0, 20, (4, 3)))
    gm = dmt_fx.transform(_Sequence(), "2x1")
    to_kjt = PlainKJT(plain_groups(plain_lookups(gm, dmt_fx.dmt_result(gm)))[0])
    assert to_kjt(inputs[1][:, :1]).lengths().tolist() == [1, 1, 1, 1]  # [B, 1] ids are fine
    with pytest.raises(DMTError) as info:
        to_kjt(inputs[1])
    assert_names_module_and_fix(info.value, "seq", "(4, 3)")
    seen = dmt_fx.transform(_Sequence(), "2x1", example_inputs=inputs)
    assert [lk.feature for lk in plain_lookups(seen, dmt_fx.dmt_result(seen), sequence=True)] == ["seq"]


class _ExportedSequence(nn.Module):
    """Per-table id lists iterated in forward (the export route, whose nodes keep shapes):
    table 0 on [B, L] ids (a sequence), table 1 on [B, 1] ids (fine)."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.ModuleList([nn.Embedding(20, 4), nn.Embedding(20, 4)])
        self.dense = nn.Linear(3, 4)

    def forward(self, dense: torch.Tensor, ids: list[torch.Tensor]) -> torch.Tensor:
        out = [self.dense(dense)]
        for k, table_ids in enumerate(ids):
            out.append(self.seq[k](table_ids).sum(1))
        return torch.cat(out, dim=1).sum(1, keepdim=True)


def test_sequence_outputs_of_the_export_route_run_as_sequences() -> None:
    """The export route (its nodes keep shapes): table 0 on [B, L] ids runs as a sequence,
    table 1 on [B, 1] ids pooled; check_distributable accepts both."""
    inputs = (torch.rand(4, 3), [torch.randint(0, 20, (4, 3)), torch.randint(0, 20, (4, 1))])
    gm = dmt_fx.transform(_ExportedSequence(), "2x1", example_inputs=inputs)
    result = dmt_fx.dmt_result(gm)
    assert result.sites.route == "export"
    check_distributable(gm)
    assert [lk.table for lk in plain_lookups(gm, result, sequence=True)] == ["seq.0"]
    assert [lk.table for lk in plain_lookups(gm, result)] == ["seq.1"]


def test_supported_plain_models_pass_the_check() -> None:
    for model in (REF, NVIDIA, PLAIN, MIXED, SMALL):
        original, inputs = factory(model)[1]()
        check_distributable(dmt_fx.transform(original, "2x2", example_inputs=inputs))


class _SharedBag(nn.Module):
    """One nn.EmbeddingBag called for two fields (dim `dim`): per-sample weights on the second
    call only when `mixed`."""

    def __init__(self, dim: int = 4, mixed: bool = False) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(20, dim, mode="sum")
        self.dense = nn.Linear(3, 4)
        self.mixed = mixed

    def forward(self, dense: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
        second = self.bag(ids, offsets, per_sample_weights=weights if self.mixed else None)
        return torch.cat([self.dense(dense), self.bag(ids, offsets), second], dim=1).sum(1, keepdim=True)


SHARED_INPUTS = (torch.rand(4, 3), torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2, 3, 3]), torch.rand(4))


def test_a_table_read_with_and_without_weights_is_refused_by_check_distributable() -> None:
    """distribute refuses it (one TorchRec collection is weighted or not); the check, which
    the CLI runs before torchrun, must refuse it too."""
    gm = dmt_fx.transform(_SharedBag(mixed=True), "2x1", example_inputs=SHARED_INPUTS)
    with pytest.raises(DMTError) as info:
        check_distributable(gm)
    assert "'bag'" in info.value.found and "per_sample_weights" in info.value.found, str(info.value)
    check_distributable(dmt_fx.transform(_SharedBag(), "2x1", example_inputs=SHARED_INPUTS))


@pytest.mark.parametrize("dim", [1, 2, 6])
def test_dims_not_a_multiple_of_4_are_accepted(dim: int) -> None:
    """Any width distributes: the runtime pads what FBGEMM's batched tables cannot take
    (dmt_fx.runtime.padded; trained on a real world in tests/test_distributed_widths.py)."""
    gm = dmt_fx.transform(_SharedBag(dim=dim), "2x1", example_inputs=SHARED_INPUTS)
    check_distributable(gm)
    check_distributable(dmt_fx.dmt_result(gm))
    tables = (TableSpec("t_0", 10, dim, "sum", ("f_0",)), TableSpec("t_1", 10, 8, "sum", ("f_1",)))
    spec = TorchRecSpec((CollectionSpec("ebc0", False, tables, ("f_0", "f_1"), None),), ((2, 2),), 2, 1, 4, 4, 0)
    check_distributable(dmt_fx.transform(build_torchrec_model(spec), "2x1",
                                         example_inputs=make_torchrec_inputs(spec, 4, 0)))


@pytest.mark.distributed
def test_models_one_after_another_in_one_process_group(tmp_path) -> None:
    """`--variants` trains models one after the other in the SAME default group (no fresh
    group per model, unlike `--cases`). The first model's plan leaves host 1 without tables:
    TorchRec's ShardingEnv builds a device mesh (a `new_group` counted on the default group),
    so the lowering must build it on every rank, or the ranks disagree on the next group's
    name and the second model hangs."""
    topology, out = "2x1", str(tmp_path / "variants")
    plan = {"topology": topology, "towers": [{"host": 0, "features": ["recent", "item"]}]}
    args = ["--target", f"{ROOT}/examples/plain_mixed.py:build_small", "--topology", topology,
            "--variants", "dmt,dmt-identity", "--steps", "2", "--batch-size", str(B), "--lr", str(LR),
            "--out", out, "--timeout-s", "30", "--plan", json.dumps(plan)]
    result = launch_job(topology, args, out, deadline_s=240, grace_s=30)
    assert result.ok, result.log_tail(40)
    for variant in ("dmt", "dmt-identity"):
        losses = [json.load(open(os.path.join(out, variant, f"rank{r}.json")))["losses"] for r in range(2)]
        assert losses[0] and all(loss == loss for loss in losses[0]), losses  # trained, finite
