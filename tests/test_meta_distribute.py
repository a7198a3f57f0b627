"""Meta-device models end to end on a real 2x2 world.

A TorchRec DLRM whose tables and dense layers are all on the meta device (26 tables of
250,000 x 64, 1.66 GB fp32 in all: more than a rank may allocate here) and a plain PyTorch
Wide&Deep on meta: each is transformed, distributed, trained 3 steps and checkpointed by
torchrun (tests/harness/meta_job.py). Each rank allocates exactly its own shards' bytes (the
ShardedTensors' local shard sizes), its peak RSS stays below the model's tables, the losses
are finite and the DCP checkpoint is written. In one process: a 26 x 10M x 128 meta model
(133 GB) transforms, plans and diffs without allocating a table, and the paths that would
need the whole model (weights_from_rank0) are refused with a DMTError."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.distributed as dist

import dmt_fx
from dmt_fx import Topology
from dmt_fx.cli.main import main as cli_main
from dmt_fx.ir.errors import DMTError
from dmt_fx.jobs.launch import launch
from dmt_fx.jobs.meta_build import skip_meta_init
from dmt_fx.jobs.target import load_target
from tests.harness import meta_job as dist_meta

TARGET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness", "meta_job.py") + ":meta_dlrm"


FACTORIES = ("meta_plain", "meta_dlrm")  # the small one first: the DLRM's peak RSS is its own


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> dict[str, list[dict]]:
    """One 2x2 torchrun job: both models, one after the other; their rank records."""
    out = tmp_path_factory.mktemp("meta")
    result = launch(Topology.parse("2x2"), [",".join(FACTORIES), "2x2", str(out)], str(out), deadline_s=300,
                    grace_s=30, module="tests.harness.meta_job")
    assert result.ok, result.log_tail(60)
    ranks = {f: [json.load(open(out / f / f"rank{r}.json")) for r in range(4)] for f in FACTORIES}
    return {"out": out, **ranks}


@pytest.fixture()
def dlrm_ranks(job) -> list[dict]:
    return job["meta_dlrm"]


@pytest.mark.distributed
def test_each_rank_allocates_only_its_shards(dlrm_ranks) -> None:
    whole = dlrm_ranks[0]["model_table_bytes"]
    assert whole == 26 * 250_000 * 64 * 4
    assert sum(r["own_shard_bytes"] for r in dlrm_ranks) == whole  # the shards cover the model once
    for r in dlrm_ranks:
        assert r["allocated_table_bytes"] == r["own_shard_bytes"], r
        assert r["own_shard_bytes"] < whole / 3, r  # 2x2 table-wise: about a quarter each
        before, peaks = r["rss_before_distribute_kb"] * 1024, r["peak_rss_kb_after"]
        # distribute allocates the rank's shards and nothing else of the tables, not even for a while
        assert peaks["distribute"] * 1024 - before < r["own_shard_bytes"] + 64 * 2**20, r
        # DCP's save stages a copy of each shard it writes (torchrec's shards are views into
        # FBGEMM's one weight buffer): at most twice the shards, far from the whole model
        assert r["peak_rss_kb"] * 1024 - before < 2 * r["own_shard_bytes"] + 96 * 2**20 < whole * 0.6, r
        assert r["meta_left"] == [], r


@pytest.mark.distributed
def test_meta_dlrm_trains_and_saves(job, dlrm_ranks) -> None:
    for r in dlrm_ranks:
        assert len(r["losses"]) == dist_meta.STEPS and all(math.isfinite(x) for x in r["losses"]), r
    assert os.path.isfile(job["out"] / "meta_dlrm" / "checkpoint" / ".metadata")


@pytest.mark.distributed
def test_shards_start_from_the_tables_initialisers(job) -> None:
    """TorchRec tables: their EmbeddingBagConfig.init_fn, uniform(+-sqrt(1 / rows)); plain
    nn.Embedding tables: their reset_parameters, normal(0, 1), the padding_idx row zero."""
    bound = (1 / dist_meta.model_config()["rows"]) ** 0.5
    stats = [s for r in job["meta_dlrm"] for s in r["init"].values()]
    assert len(stats) == 26 and all(m <= bound * (1 + 1e-6) and abs(std - bound / 3 ** 0.5) < bound * 0.01
                                    for m, std, _ in stats), stats
    plain = {k: v for r in job["meta_plain"] for k, v in r["init"].items()}
    assert len(plain) == 8 and all(abs(std - 1) < 0.05 for _, std, _ in plain.values()), plain
    assert plain["deep.0.weight"][2] == 0 and plain["deep.1.weight"][2] > 0, plain  # padding_idx=0 on deep.0


@pytest.mark.distributed
def test_meta_plain_model(job) -> None:
    ranks = job["meta_plain"]
    whole = ranks[0]["model_table_bytes"]
    assert whole == sum(n * (1 + d) for n, d in zip(dist_meta.PLAIN_ROWS, dist_meta.PLAIN_DIMS)) * 4
    assert sum(r["own_shard_bytes"] for r in ranks) == whole  # the checkpoint's view: real widths
    for r in ranks:
        # FBGEMM stores widths 1 and 10 as 4 and 12 (runtime/padded.py): the rank's padded shards
        assert r["allocated_table_bytes"] == r["own_padded_shard_bytes"], r
        assert all(math.isfinite(x) for x in r["losses"]) and r["meta_left"] == [], r
    assert os.path.isfile(job["out"] / "meta_plain" / "checkpoint" / ".metadata")


def _rss_bytes() -> int:
    return dist_meta.memory_kb("VmRSS") * 1024


def test_production_size_compiles_without_allocating(monkeypatch, capsys) -> None:
    """A production size: 26 tables of 10M x 128 (133 GB): transform, `dmt-fx plan` and `diff`."""
    monkeypatch.setenv(dist_meta.MODEL_ENV, "tables=26,rows=10000000,dim=128")
    assert dist_meta.table_bytes(dist_meta.meta_dlrm()) == 26 * 10_000_000 * 128 * 4
    before = _rss_bytes()
    dmt_fx.transform(dist_meta.meta_dlrm(), "2x2")
    for verb in ("plan", "diff"):
        assert cli_main([verb, TARGET, "--topology", "2x2", "--format", "json"]) == 0
        assert json.loads(capsys.readouterr().out)
    assert _rss_bytes() - before < 512 * 2**20  # a single table would be 5 GB


def test_weights_from_rank0_refused_for_meta() -> None:
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        gm = dmt_fx.transform(dist_meta.meta_dlrm(), "1x1")
        with pytest.raises(DMTError, match="weights_from_rank0=True with .* meta device"):
            dmt_fx.distribute(gm, weights_from_rank0=True)
    finally:
        dist.destroy_process_group()


def test_target_build_skips_only_meta_initialisers() -> None:
    """load_target's mode: meta tables skip their init (no values to write); real tensors are
    initialised exactly as without it, and metadata ops still reach meta tensors."""
    with skip_meta_init() as mode:
        table = torch.nn.EmbeddingBag(1000, 8, device="meta")
        torch.manual_seed(3)
        real = torch.nn.Linear(4, 3)
        frozen = torch.nn.Linear(4, 3, device="meta").requires_grad_(False)
    torch.manual_seed(3)
    assert torch.equal(real.weight, torch.nn.Linear(4, 3).weight)
    assert mode.skipped >= 1 and table.weight.is_meta and table.weight.shape == (1000, 8)
    assert not frozen.weight.requires_grad
    model, _ = load_target(TARGET)
    assert dist_meta.table_bytes(model) == 26 * 250_000 * 64 * 4 and all(p.is_meta for p in model.parameters())
