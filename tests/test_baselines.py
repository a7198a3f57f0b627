"""Every fp32 baseline trains like the single-process model on a real 2x2 gloo world.

4 spawned ranks (2 hosts x 2 ranks, LOCAL_WORLD_SIZE=2) build each baseline of
`dmt_fx.baselines.BASELINES` from examples/torchrec_dlrm.py and train 3 SGD steps
(lr 0.1): rank r takes rows [r*B, (r+1)*B) of global batch `step`, loss = BCE-with-logits
mean over its local batch. The parent process trains the original model on the global
batches (mean over the global batch) and checks, at every step, the outputs (1e-5), and
after training every dense parameter (1e-5) and every local table shard (1e-6). The tables
move by ~1e-4 in 3 steps, too little for the outputs alone to prove that they train, so
the shards are compared directly (and the test checks that they did move).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from dmt_fx.baselines import BASELINES
from dmt_fx.bench.variants import of_precision
from examples import torchrec_dlrm as ex
from tests.harness.launch import run_world
from tests.harness.training import train_rank_steps, train_steps

pytestmark = pytest.mark.distributed  # every test here starts processes

H, L = 2, 2
N = H * L
B = 4
STEPS = 3
LR = 0.1
TOL = 1e-5
TABLE_TOL = 1e-6  # tables move ~5e-5 in 3 steps: a looser bound could miss untrained tables
TIMEOUT_S = 240  # a ceiling: 4 ranks share 2 cores with whatever else runs
# Before any test registers its own; fp32 only: the qcomms twins (+fp16, +bf16) round the
# embeddings on purpose, and tests/test_qcomms.py checks them against their fp32 twin.
BUILT_IN = of_precision(BASELINES.names())


def _run_world(fn, out_dir: Path) -> None:
    run_world(fn, out_dir, nprocs=N, timeout_s=TIMEOUT_S)


def _table_of(key: str) -> str | None:
    return key.split("embedding_bags.")[1].split(".")[0] if "embedding_bags." in key else None


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(N),
                      LOCAL_RANK=str(rank % L), LOCAL_WORLD_SIZE=str(L), DMT_FX_TIMEOUT_S="60")
    torch.set_num_threads(1)  # 4 ranks share the machine's cores (torchrun does the same)
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    import torch.distributed as dist

    import dmt_fx
    from dmt_fx.baselines import build_baseline
    from dmt_fx.baselines.two_d import local_shards

    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    topology = dmt_fx.Topology(H, L)
    result, timings = {}, {}
    for name in BUILT_IN:
        started = time.monotonic()
        model, _ = ex.build(0)
        module, optimizer = build_baseline(name, model, topology=topology, optimizer_kwargs={"lr": LR})
        outputs = train_rank_steps(module, optimizer, ex.make_inputs, rank, N, B, STEPS)
        dense, shards = {}, []
        for key, value in module.state_dict().items():
            table = _table_of(key)
            if table is None:
                dense[key] = value.detach().clone()
            else:
                for offsets, tensor in local_shards(value):  # ShardedTensor, or DTensor (torchrec-2d)
                    shards.append((table, offsets, tensor.detach().clone()))
        result[name] = {"outputs": outputs, "dense": dense, "shards": shards}
        timings[name] = time.monotonic() - started
    dist.barrier()
    dist.destroy_process_group()
    torch.save(result, Path(out_dir, f"rank{rank}.pt"))
    Path(out_dir, f"timings{rank}.json").write_text(json.dumps(timings))


@pytest.fixture(scope="module")
def reference():
    """Single process, global batches, mean over the global batch."""
    from dmt_fx.jobs.data import labels

    model, _ = ex.build(0)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    outputs = train_steps(model, optimizer, ex.make_inputs, B * N, STEPS, labels=lambda _, step: labels(B * N, step))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tables = {_table_of(k): v for k, v in state.items() if _table_of(k)}
    initial_tables = {_table_of(k): v for k, v in initial.items() if _table_of(k)}
    return {"outputs": outputs, "state": state, "tables": tables, "initial_tables": initial_tables}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("baselines")
    started = time.monotonic()
    _run_world(_worker, out)
    print(f"2x2 world: {time.monotonic() - started:.1f} s;",
          json.loads((out / "timings0.json").read_text()))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(N)]


@pytest.mark.parametrize("name", BUILT_IN)
def test_outputs_match_single_process_every_step(name, ranks, reference):
    for step in range(STEPS):
        gathered = torch.cat([ranks[r][name]["outputs"][step] for r in range(N)])
        diff = (gathered - reference["outputs"][step]).abs().max().item()
        assert diff <= TOL, f"{name} step {step}: max |diff| {diff}"


@pytest.mark.parametrize("name", BUILT_IN)
def test_dense_parameters_match_after_training(name, ranks, reference):
    for r in range(N):
        dense = ranks[r][name]["dense"]
        expected = {k: v for k, v in reference["state"].items() if not _table_of(k)}
        assert dense.keys() == expected.keys()
        for key, value in dense.items():
            assert torch.allclose(value, expected[key], atol=TOL, rtol=0), f"{name} rank {r} {key}"


@pytest.mark.parametrize("name", BUILT_IN)
def test_table_shards_match_and_trained(name, ranks, reference):
    covered, seen = {table: 0 for table in reference["tables"]}, set()
    for r in range(N):
        for table, (row, col), tensor in ranks[r][name]["shards"]:
            rows, cols = tensor.shape
            want = reference["tables"][table][row:row + rows, col:col + cols]
            assert torch.allclose(tensor, want, atol=TABLE_TOL, rtol=0), f"{name} rank {r} {table}"
            if (table, row, col) not in seen:  # torchrec-2d: every shard once per replica group
                seen.add((table, row, col))
                covered[table] += tensor.numel()
    assert covered == {t: v.numel() for t, v in reference["tables"].items()}, "shards do not tile the tables"
    for table, trained in reference["tables"].items():
        moved = (trained - reference["initial_tables"][table]).abs().max().item()
        assert moved > 10 * TABLE_TOL, f"reference table {table} barely moved ({moved}): the check proves nothing"
