"""Plain PyTorch lookups (nn.EmbeddingBag / nn.Embedding, symbolic and export capture) on
TorchRec's sharded tables, on real gloo worlds launched by torchrun (one agent per host).

One launch per topology runs several cases in the same process group (the worker's
`--cases`): the reference DLRM (export route, flat id lists + offsets) and the NVIDIA-style
model (symbolic route, one nn.Embedding per column of a [B, F] index, one sparse=True
table), each trained with SGD and with Adagrad, a checkpoint of the single-process original
loaded into a DMT job, and linear tower modules (c = 2) on the reference DLRM. Every step's
outputs and the final parameters (read back from the DMT job's DCP checkpoint into the
single-process original) must be within 1e-5 of the original trained in one process on the
same global batches.
"""

from __future__ import annotations

import importlib
import json
import os

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import dmt_fx
from dmt_fx import Topology
from dmt_fx.ir.errors import DMTError
from dmt_fx.jobs.data import clicks
from dmt_fx.jobs.launch import launch
from dmt_fx.runtime.distribute import check_distributable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, STEPS, LR = 4, 5, 0.1
OPTIMIZERS = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}
MODELS = ("reference_dlrm", "nvidia_dlrm")
TOLERANCE = 1e-5
MAX_DIFFS: dict[str, float] = {}  # case -> max |difference| over outputs and parameters


def example(name: str):
    return importlib.import_module(f"examples.{name}")


def target(name: str) -> str:
    return f"{ROOT}/examples/{name}.py:build"


def train_original(name: str, optimizer: str, world: int, model: nn.Module | None = None,
                   steps: int = STEPS) -> tuple[list[torch.Tensor], nn.Module]:
    """Single-process training of the original model on the global batches the job sees."""
    module = example(name)
    model = model if model is not None else module.build()[0]
    opt = OPTIMIZERS[optimizer](model.parameters(), lr=LR)
    outputs = []
    for step in range(steps):
        inputs = module.make_inputs(B * world, step)
        out = model(*inputs)
        outputs.append(out.detach())
        loss = F.binary_cross_entropy_with_logits(out, clicks(inputs, step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return outputs, model


def gathered(out_dir: str, world: int) -> list[torch.Tensor]:
    per_rank = [torch.load(os.path.join(out_dir, f"outputs_rank{r}.pt")) for r in range(world)]
    return [torch.cat([per_rank[r][s] for r in range(world)]) for s in range(len(per_rank[0]))]


def max_diff(expected: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    assert len(expected) == len(got), (len(expected), len(got))
    return max(float((e - g).abs().max()) for e, g in zip(expected, got))


def state_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert list(a) == list(b), (list(a), list(b))
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def checkpoint_into_original(name: str, path: str) -> dict[str, torch.Tensor]:
    model = example(name).build(seed=123)[0]  # other weights: everything must come from the checkpoint
    state = model.state_dict()
    dcp.load(state, checkpoint_id=path)
    model.load_state_dict(state)
    return model.state_dict()


def cases(tmp_path) -> list[dict]:
    """The cases of the 2x2 launch: (model x optimizer) with a checkpoint, the reverse load,
    linear tower modules."""
    out = []
    for name in MODELS:
        for opt in OPTIMIZERS:
            out.append({"name": f"{name}-{opt}", "args": ["--target", target(name), "--optimizer", opt,
                                                          "--save-checkpoint", str(tmp_path / f"{name}-{opt}.ckpt")]})
        out.append({"name": f"{name}-load", "args": ["--target", target(name), "--steps", "1",
                                                     "--load-checkpoint", str(tmp_path / f"{name}-original.ckpt")]})
    out.append({"name": "reference_dlrm-linear", "args": ["--target", target("reference_dlrm"),
                                                          "--tower-module", "linear", "--compression", "2"]})
    return out


@pytest.fixture(scope="module")
def job_2x2(tmp_path_factory):
    """One torchrun launch on 2x2 running every case; the single-process checkpoints first."""
    tmp = tmp_path_factory.mktemp("plain2x2")
    for name in MODELS:
        _, trained = train_original(name, "sgd", 4, steps=3)
        dcp.save(trained.state_dict(), checkpoint_id=str(tmp / f"{name}-original.ckpt"))
    with open(tmp / "cases.json", "w") as handle:
        json.dump(cases(tmp), handle)
    args = ["--target", target(MODELS[0]), "--topology", "2x2", "--steps", str(STEPS), "--batch-size", str(B),
            "--lr", str(LR), "--out", str(tmp / "out"), "--timeout-s", "60", "--record-outputs",
            "--cases", str(tmp / "cases.json")]
    result = launch(Topology.parse("2x2"), args, str(tmp / "out"), deadline_s=600, grace_s=60)
    assert result.ok, result.log_tail(80)
    return tmp


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_plain_training_equals_single_process(job_2x2, name: str, optimizer: str) -> None:
    case = f"{name}-{optimizer}"
    expected, trained = train_original(name, optimizer, 4)
    outputs = max_diff(expected, gathered(str(job_2x2 / "out" / case), 4))
    # The DMT job's checkpoint (original keys, tables as ShardedTensors) loads into the original.
    params = state_diff(checkpoint_into_original(name, str(job_2x2 / f"{case}.ckpt")), trained.state_dict())
    MAX_DIFFS[f"{case} 2x2"] = max(outputs, params)
    print(f"{case} 2x2: max |diff| outputs {outputs:.3g}, parameters {params:.3g}")
    assert outputs <= TOLERANCE and params <= TOLERANCE, (outputs, params)


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_of_the_original_starts_a_dmt_job(job_2x2, name: str) -> None:
    """The reverse direction: the single-process original's DCP checkpoint, loaded by the job."""
    _, trained = train_original(name, "sgd", 4, steps=3)
    expected = trained(*example(name).make_inputs(B * 4, 0)).detach()
    got = gathered(str(job_2x2 / "out" / f"{name}-load"), 4)[0]
    diff = float((expected - got).abs().max())
    print(f"{name}-load 2x2: max |diff| first outputs {diff:.3g}")
    assert diff <= 1e-6, diff


def test_tower_modules_on_a_plain_model(job_2x2) -> None:
    """Linear tower modules (c = 2) on the reference DLRM: the job equals the logical DMT-TM
    model trained in one process."""
    module = example("reference_dlrm")
    model, inputs = module.build()
    torch.manual_seed(0)  # as the worker does before transform
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module="linear", compression=2)
    expected, _ = train_original("reference_dlrm", "sgd", 4, model=gm)
    diff = max_diff(expected, gathered(str(job_2x2 / "out" / "reference_dlrm-linear"), 4))
    print(f"reference_dlrm-linear-c2 2x2: max |diff| outputs {diff:.3g}")
    assert diff <= TOLERANCE, diff


# ---------------------------------------------------------------- refused before any collective


class _Bag(nn.Module):
    def __init__(self, **options) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(20, 4, **options)
        self.dense = nn.Linear(3, 4)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.dense(dense), self.bag(ids, offsets)], dim=1).sum(1, keepdim=True)


@pytest.mark.parametrize("options, says", [
    ({"mode": "max"}, "mode='max'"),
    ({"max_norm": 1.0}, "max_norm=1.0"),
    ({"padding_idx": 0}, "padding_idx=0"),
    ({"scale_grad_by_freq": True}, "scale_grad_by_freq=True"),
])
def test_what_torchrec_cannot_compute_is_refused_by_name(options: dict, says: str) -> None:
    inputs = (torch.rand(4, 3), torch.tensor([1, 2, 3, 4, 5]), torch.tensor([0, 2, 3, 3]))
    gm = dmt_fx.transform(_Bag(**options), "2x1", example_inputs=inputs)
    assert isinstance(gm, fx.GraphModule)
    with pytest.raises(DMTError) as info:
        check_distributable(gm)
    assert says in str(info.value) and "'bag'" in str(info.value), str(info.value)


def test_supported_plain_models_pass_the_check() -> None:
    for name in (*MODELS, "plain_embedding"):
        model, inputs = example(name).build()
        check_distributable(dmt_fx.transform(model, "2x2", example_inputs=inputs))
