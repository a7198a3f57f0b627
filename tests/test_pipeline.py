"""Train pipelines: pipelined training equals unpipelined training.

One torchrun launch on 2x2 (gloo) runs every case of the worker's `--cases` twice, without
and with `--pipeline`: DMT identity and DMT c4 through `dmt_fx.runtime.pipeline` (batch
i+1's peer id exchange and intra-host input dist spread over batch i's step), and the flat
table-wise plan through TorchRec's own `TrainPipelineSparseDist`, each with SGD and
Adagrad. Per pair: every step's loss and local outputs, and the checkpoint's final
parameters, max |diff| <= 1e-6. Ids only move in the pipeline, so nothing but the order
of collectives may change. The flat case also checks that TorchRec really pipelined the
sharded collection (its `_pipelined_modules`, the record's `pipelined_modules`), and each
DMT case that a pipelined step agrees on one batch, as an unpipelined step does.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from dmt_fx import DMTError, Topology
from dmt_fx.baselines.pipeline import check_pipelinable
from dmt_fx.bench.emulated import best_flat_per_mode
from dmt_fx.cli.demo import emulated_args
from dmt_fx.cli.main import parser
from dmt_fx.cli.run import job_spec
from dmt_fx.jobs.steps import PIPELINED, pipelined_variants, split_variant
from tests.harness.launch import launch_job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = f"{ROOT}/examples/torchrec_dlrm.py:build"
VARIANTS = ("dmt-identity", "dmt-c4", "flat-table_wise")
OPTIMIZERS = ("sgd", "adagrad")
STEPS = 4
TOLERANCE = 1e-6
EXPECTED_PIPELINED = {"dmt-identity": ["HostTowerExchange"], "dmt-c4": ["HostTowerBlock"],
                      "flat-table_wise": ["model.sparse_arch.embedding_bag_collection"]}


def test_variant_names_carry_the_pipelining_mode() -> None:
    assert pipelined_variants(["flat-table_wise", "dmt-c4"], "off") == ["flat-table_wise", "dmt-c4"]
    assert pipelined_variants(["dmt-c4"], "on") == ["dmt-c4" + PIPELINED]
    assert pipelined_variants(["a", "b"], "both") == ["a", "a+pipeline", "b", "b+pipeline"]
    assert split_variant("dmt-c4+pipeline") == ("dmt-c4", True)
    assert split_variant("dmt-c4") == ("dmt-c4", False) and split_variant("dmt-c4", True) == ("dmt-c4", True)
    with pytest.raises(ValueError, match="off, on or both"):
        pipelined_variants(["a"], "sometimes")


def case_name(optimizer: str, variant: str, pipelined: bool) -> str:
    return f"{optimizer}-{variant}{'-pipelined' if pipelined else ''}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("pipeline"))
    cases = [{"name": case_name(o, v, p),
              "args": ["--variant", v, "--optimizer", o, *(["--pipeline"] if p else []),
                       "--save-checkpoint", os.path.join(out, case_name(o, v, p), "ckpt")]}
             for o in OPTIMIZERS for v in VARIANTS for p in (False, True)]
    with open(os.path.join(out, "cases.json"), "w") as handle:
        json.dump(cases, handle)
    args = ["--target", TARGET, "--topology", "2x2", "--steps", str(STEPS), "--batch-size", "8", "--lr", "0.1",
            "--out", out, "--timeout-s", "60", "--record-outputs", "--profile-steps", "0", "--traffic-steps", "1",
            "--cases", os.path.join(out, "cases.json")]
    result = launch_job(Topology.parse("2x2"), args, out, deadline_s=600, grace_s=30)
    assert result.ok, result.log_tail(30)
    return out


def final_parameters(case_dir: str) -> dict[str, torch.Tensor]:
    path = os.path.join(case_dir, "params.pt")
    dcp_to_torch_save(os.path.join(case_dir, "ckpt"), path)
    return torch.load(path)


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b)
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@pytest.mark.distributed
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_pipelined_training_equals_unpipelined(trained: str, variant: str, optimizer: str) -> None:
    plain, piped = (os.path.join(trained, case_name(optimizer, variant, p)) for p in (False, True))
    for rank in range(4):
        a, b = (json.load(open(os.path.join(d, f"rank{rank}.json"))) for d in (plain, piped))
        assert (a["pipelined"], b["pipelined"]) == (False, True)
        assert b["pipelined_modules"] == EXPECTED_PIPELINED[variant]
        assert len(b["losses"]) == STEPS
        losses = max(abs(x - y) for x, y in zip(a["losses"], b["losses"]))
        outputs = max_diff(*(torch.load(os.path.join(d, f"outputs_rank{rank}.pt")) for d in (plain, piped)))
        assert losses <= TOLERANCE and outputs <= TOLERANCE, f"rank {rank}: losses {losses:.3g}, outputs {outputs:.3g}"
    if variant.startswith("dmt"):  # the metered step: one batch agreement, pipelined or not
        agreements = [json.load(open(os.path.join(d, "rank0.json")))["traffic"]["control_collectives"]
                      for d in (plain, piped)]
        assert agreements == [1, 1], f"batch agreements per step, unpipelined and pipelined: {agreements}"
    want, got = final_parameters(plain), final_parameters(piped)
    assert list(want) == list(got)
    params = max(float((want[k] - got[k]).abs().max()) for k in want)
    assert params <= TOLERANCE, f"final parameters differ by {params:.3g}"


def test_best_flat_is_chosen_within_each_pipelining_mode() -> None:
    def row(variant: str, pipelined: bool, step: float) -> dict:
        return {"variant": variant, "pipelined": pipelined, "step_time_median_s": step,
                "cross_host_embedding_bytes": 0.0, "cross_host_id_bytes": 0.0}
    rows = best_flat_per_mode([row("flat-table_wise", False, 2.0), row("flat-table_wise", True, 1.0),
                               row("flat-row_wise", False, 3.0), row("flat-row_wise", True, 0.5),
                               row("dmt-identity", False, 1.0), row("dmt-identity", True, 1.0)], 1e6)
    assert [r["is_best_flat"] for r in rows] == [True, False, False, True, False, False]
    assert [r["speedup_vs_best_flat"] for r in rows[4:]] == [2.0, 0.5]
    assert [r["best_flat"] for r in rows[4:]] == ["flat-table_wise", "flat-row_wise"]


def test_pipeline_flags_reach_the_worker() -> None:
    run = parser().parse_args(["run", "--pipeline"])
    assert "--pipeline" in job_spec(run).extra and "--pipeline" not in job_spec(parser().parse_args(["run"])).extra
    demo = parser().parse_args(["demo", "--pipeline"])
    assert emulated_args(demo, ["dmt-identity"]).pipeline == "on"
    assert emulated_args(parser().parse_args(["demo"]), ["dmt-identity"]).pipeline == "off"
    bench = parser().parse_args(["bench", "emulated", "--pipeline", "both"])
    assert bench.pipeline == "both"


def test_only_flat_baselines_run_under_torchrecs_pipeline() -> None:
    check_pipelinable("flat-grid_shard")
    check_pipelinable("torchrec-2d")
    with pytest.raises(DMTError, match="torchrec-towers.* with --pipeline"):
        check_pipelinable("torchrec-towers")


# ---------------------------------------------------------------- a bad next batch

SHORT_RANK, SHORT_STEP, LOCAL_BATCH = 1, 2, 8


def _short_batch_worker(rank: int, port: int, out_dir: str) -> None:
    """2x1 through DMTTrainPipeline; rank 1's batch 2 is one sample short (in itself valid)."""
    import warnings
    from datetime import timedelta

    import dmt_fx
    from dmt_fx.jobs.data import clicks, slice_batch
    from dmt_fx.models import zoo
    from dmt_fx.runtime.pipeline import DMTTrainPipeline, PipelineBatch
    from tests.harness.targets.dist_bad_batch import spoil

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=60))
    model, example = zoo.default_dlrm()
    module, optimizer = dmt_fx.distribute(dmt_fx.transform(model, "2x1", example_inputs=example),
                                          optimizer_kwargs={"lr": 0.1})

    def batches():
        for step in range(5):
            inputs = slice_batch(zoo.make_inputs(2 * LOCAL_BATCH, step), rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
            if rank == SHORT_RANK and step == SHORT_STEP:
                inputs = spoil(*inputs, "short")
            yield PipelineBatch(tuple(inputs), clicks(inputs, step))

    pipeline, stopped = DMTTrainPipeline(module, optimizer), None
    it = batches()
    try:
        for _ in range(5):
            pipeline.progress(it)
    except DMTError as error:
        stopped = f"{type(error).__name__}: {error.one_line()}"
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as handle:
        handle.write(str(stopped))
    torch.distributed.destroy_process_group()


@pytest.mark.distributed
def test_a_short_next_batch_stops_the_pipeline_on_every_rank_by_name(tmp_path) -> None:
    """The pipeline starts batch i+1's peer ids during step i: it agrees on the batch first,
    so the short batch is named on both ranks (without that, gloo's all-to-all aborts)."""
    from tests.harness.launch import run_world

    run_world(_short_batch_worker, tmp_path, nprocs=2, timeout_s=300)
    for rank in range(2):
        said = (tmp_path / f"rank{rank}.txt").read_text()
        batch = LOCAL_BATCH - 1 if rank == SHORT_RANK else LOCAL_BATCH
        assert said.startswith("BatchSizeMismatchError: ") and \
            f"a local batch of {batch} samples, while the ranks' batches range from 7 to 8" in said, said
