"""Tables of any width on a real world: width 1 (the FM family's linear part), 3
and 10 are sharded padded to a multiple of 4 and sliced back (dmt_fx.runtime.padded).

One torchrun launch per topology (2x2, 4x1; every case on both under `slow`) trains an FM
(per-field width-1 and width-10 tables), a DeepFM (a joint width-1 table with offsets,
width-3 tables), a Wide&Deep (widths 1, 3, 10), TorchRec pooled and weighted collections
(widths 1, 3, 6) and quotient-remainder pairs (widths 3, 1) with SGD, Adagrad and Adam; every step's outputs and the job's DCP
checkpoint (original keys and shapes) equal single-process training within 1e-5. The
original's checkpoint also starts a DMT job (checkpoints both ways)."""

from __future__ import annotations

import json
import os

import pytest
import torch.distributed.checkpoint as dcp
import torch.nn as nn

import dmt_fx
from dmt_fx import Topology
from dmt_fx.ir.widths import wire_widths
from dmt_fx.runtime.distribute import check_distributable
from tests.harness import training
from tests.harness.cases import gathered_outputs as gathered
from tests.harness.cases import job_diffs
from tests.harness.corpus.fm_family import make_inputs
from tests.harness.launch import launch_cases
from tests.harness.targets import dist_widths

TARGET = dist_widths.__file__
B, STEPS, TOLERANCE = 4, 4, 1e-5
OPTIMIZERS = ("sgd", "adagrad", "adam")
MODELS = ("fm", "deepfm", "wide_deep", "collections_fm", "qr_fm")
# Adam: fused into FBGEMM's backward on a GPU; on the CPU, where FBGEMM has no fused Adam,
# the tables take TorchRec's DENSE kernel and the dense Adam (runtime/optim.table_kernel).
ALL_CASES = [(m, o, "table_wise") for m in MODELS for o in OPTIMIZERS] + [("wide_deep", "adagrad", "row_wise")]
# Per launch: the default ones are shorter lists (60 s in all), "4x1-all" (slow) runs all.
CASES = {"2x2": [c for c in ALL_CASES if c[2] == "table_wise" and c[1] != "adam" and (c[0] in MODELS[:3] or c[1] == "sgd")]
         + [("fm", "adam", "table_wise")],
         "4x1": [("deepfm", "adagrad", "table_wise"), ("collections_fm", "sgd", "table_wise"),
                 ("deepfm", "adam", "table_wise")],
         "2x2-all": ALL_CASES, "4x1-all": ALL_CASES}
LOAD = "deepfm-load"  # the original's checkpoint (2 steps of SGD) loaded by a 1-step job
MAX_DIFFS: dict[str, tuple[float, float]] = {}


def _name(model: str, optimizer: str, sharding: str) -> str:
    return f"{model}-{optimizer}" + ("" if sharding == "table_wise" else f"-{sharding}")


def _build(factory: str, seed: int = 0) -> nn.Module:
    return getattr(dist_widths, factory)(seed)[0]


def train_original(factory: str, optimizer: str, world: int, steps: int = STEPS) -> tuple[list, nn.Module]:
    model = _build(factory)
    batches = getattr(getattr(dist_widths, factory), "make_inputs", make_inputs)  # the worker's choice too
    return training.train_original(model, batches, B * world, steps, optimizer)


def _launch(tmp, topology: str, cases: list[tuple[str, str, str]]) -> None:
    world = Topology.parse(topology).world_size
    _, trained = train_original("deepfm", "sgd", world, steps=2)
    dcp.save(trained.state_dict(), checkpoint_id=str(tmp / "original"))
    cases = [{"name": _name(m, o, s), "args": ["--target", f"{TARGET}:{m}", "--optimizer", o, "--sharding", s,
                                               "--save-checkpoint", str(tmp / f"{_name(m, o, s)}.ckpt")]}
             for m, o, s in cases]
    cases.append({"name": LOAD, "args": ["--target", f"{TARGET}:deepfm", "--steps", "1",
                                         "--load-checkpoint", str(tmp / "original")]})
    result = launch_cases(cases, str(tmp / "cases.json"), str(tmp / "out"), topology, target=f"{TARGET}:fm",
                          steps=STEPS, batch_size=B)
    assert result.ok, result.log_tail(80)


@pytest.fixture(scope="module", params=["2x2", "4x1", *(pytest.param(n, marks=pytest.mark.slow) for n in ("2x2-all", "4x1-all"))])
def launched(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"widths-{request.param}")
    topology = request.param.split("-")[0]
    _launch(tmp, topology, CASES[request.param])
    yield request.param, tmp
    for case, (outputs, params) in sorted(MAX_DIFFS.items()):
        print(f"  {case:35s} max |diff| outputs {outputs:9.3g} parameters {params:9.3g}")


def test_narrow_tables_are_accepted_and_spread() -> None:
    """Guards the cases below: every model has narrow tables, distribute accepts it, and the
    plan puts tables on both hosts of 2x2."""
    for factory in MODELS:
        model, inputs = getattr(dist_widths, factory)()
        gm = dmt_fx.transform(model, "2x2", example_inputs=inputs)
        check_distributable(gm)
        result = dmt_fx.dmt_result(gm)
        assert any(t.embedding_dim % 4 for t in result.sites.tables)
        assert {t.host for t in result.plan.towers if t.features} == {0, 1}


@pytest.mark.distributed
def test_training_equals_single_process(launched) -> None:
    launch_name, tmp = launched
    world = Topology.parse(launch_name.split("-")[0]).world_size
    failed = []
    for model, optimizer, sharding in CASES[launch_name]:
        name = _name(model, optimizer, sharding)
        expected, trained = train_original(model, optimizer, world)
        assert len(expected) == STEPS
        want = trained.state_dict()
        outputs, params, state = job_diffs(expected, str(tmp / "out" / name), world, _build(model, seed=123),
                                           str(tmp / f"{name}.ckpt"), want)
        assert all(state[k].shape == v.shape for k, v in want.items())
        MAX_DIFFS[f"{launch_name} {name}"] = (outputs, params)
        if outputs > TOLERANCE or params > TOLERANCE:
            failed.append((name, outputs, params))
    assert not failed, failed


@pytest.mark.distributed
def test_checkpoint_of_the_original_starts_a_dmt_job(launched) -> None:
    launch_name, tmp = launched
    world = Topology.parse(launch_name.split("-")[0]).world_size
    _, trained = train_original("deepfm", "sgd", world, steps=2)
    expected = trained(*make_inputs(B * world, 0)).detach()
    got = gathered(str(tmp / "out" / LOAD), world)[0]
    diff = float((expected - got).abs().max())
    MAX_DIFFS[f"{launch_name} {LOAD} (first outputs)"] = (diff, 0.0)
    assert diff <= 1e-6, diff


TRAFFIC_MODELS = {"fm": "fm_aligned", "deepfm": "deepfm_aligned"}


def embedding_widths(factory: str) -> tuple[int, int]:
    """(real, padded) total width of the model's tables: what one sample's pooled outputs
    are on the peer exchange and inside the host (dmt_fx.ir.widths.wire_widths)."""
    model, inputs = getattr(dist_widths, factory)()
    result = dmt_fx.dmt_result(dmt_fx.transform(model, "2x2", example_inputs=inputs))
    return wire_widths([t.embedding_dim for t in result.sites.tables])


def traffic(out: str, name: str) -> dict[str, float]:
    per_rank = [json.load(open(os.path.join(out, name, f"rank{r}.json")))["traffic"] for r in range(4)]
    return {k: sum(t[k] for t in per_rank) for k in ("intra_host_embedding_bytes", "cross_host_embedding_bytes")}


@pytest.mark.distributed
@pytest.mark.slow
def test_traffic_counts_include_the_padding(tmp_path) -> None:
    """Measured traffic (the TrafficMeter) of the narrow FM / DeepFM against the same models
    built with the padded widths: inside the host (TorchRec's output dist of the padded
    tables) the bytes are the padded ones; the peer exchange carries the real widths only."""
    names = [*TRAFFIC_MODELS, *TRAFFIC_MODELS.values()]
    cases = [{"name": n, "args": ["--target", f"{TARGET}:{n}"]} for n in names]
    out = str(tmp_path / "out")
    result = launch_cases(cases, str(tmp_path / "cases.json"), out, "2x2", target=f"{TARGET}:fm", steps=4,
                          batch_size=B, record=False)
    assert result.ok, result.log_tail(80)
    for narrow, aligned in TRAFFIC_MODELS.items():
        got, base = traffic(out, narrow), traffic(out, aligned)
        real, padded = embedding_widths(narrow)
        assert embedding_widths(aligned) == (padded, padded)
        print(f"  {narrow}: widths {real} -> {padded}; measured {got}; aligned {base}")
        assert got["intra_host_embedding_bytes"] == base["intra_host_embedding_bytes"]
        assert got["cross_host_embedding_bytes"] * padded == base["cross_host_embedding_bytes"] * real
