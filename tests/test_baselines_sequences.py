"""The fp32 flat baselines shard EmbeddingCollections too, and train like one process.

A pooled + sequence model (tests/harness/corpus/sequences.py `PooledSequenceDLRM`, sequence width 8:
TorchRec shards a width of a multiple of 4 without padding; its pooled features read by key:
a sharded EmbeddingBagCollection returns its columns in its sharding's order, so a model
reading `kt.values()` computes something else under DMP) on a real 2x2 gloo world: 4
spawned ranks build `flat-table_wise`, `flat-row_wise` and `flat-table_row_wise` (TorchRec's
DMP with the EmbeddingBagCollectionSharder AND the EmbeddingCollectionSharder), train 3 SGD
steps (lr 0.1, rank r takes rows [r*B, (r+1)*B) of global batch `step`, local-mean BCE)
and are checked against the original trained in one process on the global batches: outputs
every step (1e-5), dense parameters (1e-5) and every local table shard (1e-6), the shards
tiling every table. Each rank also reports how its sequence collection is sharded: a
ShardedEmbeddingCollection (not data-parallel) and the sharding type of each table.
"""

from __future__ import annotations

import os
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from tests.harness.corpus import sequences as corpus
from tests.harness.launch import run_world

H, L = 2, 2
N = H * L
B = 4
STEPS = 3
LR = 0.1
TOL = 1e-5
TABLE_TOL = 1e-6
SEQ_DIM = 8
TIMEOUT_S = 300  # a ceiling: 4 ranks share 2 cores with whatever else runs
NAMES = ("flat-table_wise", "flat-row_wise", "flat-table_row_wise")
# what each flat plan makes of the two sequence tables on 2x2 (EmbeddingCollectionSharder's types)
SEQUENCE_SHARDING = {"flat-table_wise": "table_wise", "flat-row_wise": "row_wise",
                     "flat-table_row_wise": "column_wise"}


class KeyedPooledSequence(corpus.PooledSequenceDLRM):
    """The corpus model reading its pooled features by key (TorchRec's contract for DMP)."""

    def forward(self, dense, pooled, sequences):
        kt = self.pooled(pooled)
        jts = self.sequences(sequences)
        seq = [corpus._masked_mean(jts[k].to_padded_dense(corpus.MAX_LEN), jts[k].lengths())
               for k in corpus.SEQUENCE_ROWS]
        return self.over(torch.cat([self.dense(dense), *[kt[k] for k in corpus.POOLED_ROWS], *seq], dim=1))


def build(seed: int = 0) -> torch.nn.Module:
    return KeyedPooledSequence(seed, seq_dim=SEQ_DIM)


def table_of(key: str) -> str | None:
    for prefix in ("embedding_bags.", "embeddings."):
        if prefix in key:
            return key.split(prefix)[1].split(".")[0]
    return None


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(N),
                      LOCAL_RANK=str(rank % L), LOCAL_WORLD_SIZE=str(L), DMT_FX_TIMEOUT_S="60")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    import torch.distributed as dist
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor
    from torchrec.distributed.embedding import ShardedEmbeddingCollection

    import dmt_fx
    from dmt_fx.baselines import build_baseline
    from dmt_fx.baselines.two_d import local_shards
    from tests.harness.training import train_rank_steps

    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    topology = dmt_fx.Topology(H, L)
    result = {}
    for name in NAMES:
        module, optimizer = build_baseline(name, build(0), topology=topology, optimizer_kwargs={"lr": LR})
        outputs = train_rank_steps(module, optimizer, corpus.pooled_sequence_inputs, rank, N, B, STEPS)
        dense, shards = {}, []
        for key, value in module.state_dict().items():
            table = table_of(key)
            if table is None:
                dense[key] = value.detach().clone()
            else:
                # a plain tensor is a data-parallel (replicated) table: all of it, on every rank
                pieces = local_shards(value) if isinstance(value, (ShardedTensor, DTensor)) else [((0, 0), value)]
                shards += [(table, offsets, t.detach().clone()) for offsets, t in pieces]
        sequences = module.module.sequences
        kinds = {t: p.sharding_type for t, p in sequences.module_sharding_plan.items()} \
            if isinstance(sequences, ShardedEmbeddingCollection) else {}
        result[name] = {"outputs": outputs, "dense": dense, "shards": shards, "sequence_shardings": kinds}
    dist.barrier()
    dist.destroy_process_group()
    torch.save(result, Path(out_dir, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def reference():
    from dmt_fx.jobs.data import labels

    model = build(0)
    initial = {table_of(k): v.detach().clone() for k, v in model.state_dict().items() if table_of(k)}
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    outputs = []
    for step in range(STEPS):
        out = model(*corpus.pooled_sequence_inputs(B * N, step))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out, labels(B * N, step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        outputs.append(out.detach())
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tables = {table_of(k): v for k, v in state.items() if table_of(k)}
    return {"outputs": outputs, "state": state, "tables": tables, "initial_tables": initial}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("baselines_sequences")
    run_world(_worker, out, nprocs=N, timeout_s=TIMEOUT_S)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(N)]


@pytest.mark.distributed
@pytest.mark.parametrize("name", NAMES)
def test_sequence_collection_is_sharded(name, ranks):
    for r in range(N):
        kinds = ranks[r][name]["sequence_shardings"]
        assert kinds == {"s_history": SEQUENCE_SHARDING[name], "s_searches": SEQUENCE_SHARDING[name]}, (name, kinds)


@pytest.mark.distributed
@pytest.mark.parametrize("name", NAMES)
def test_outputs_match_single_process_every_step(name, ranks, reference):
    for step in range(STEPS):
        gathered = torch.cat([ranks[r][name]["outputs"][step] for r in range(N)])
        diff = (gathered - reference["outputs"][step]).abs().max().item()
        assert diff <= TOL, f"{name} step {step}: max |diff| {diff}"


@pytest.mark.distributed
@pytest.mark.parametrize("name", NAMES)
def test_dense_parameters_match_after_training(name, ranks, reference):
    expected = {k: v for k, v in reference["state"].items() if not table_of(k)}
    for r in range(N):
        dense = ranks[r][name]["dense"]
        assert dense.keys() == expected.keys()
        for key, value in dense.items():
            assert torch.allclose(value, expected[key], atol=TOL, rtol=0), f"{name} rank {r} {key}"


@pytest.mark.distributed
@pytest.mark.parametrize("name", NAMES)
def test_table_shards_match_and_trained(name, ranks, reference):
    covered = {table: 0 for table in reference["tables"]}
    for r in range(N):
        for table, (row, col), tensor in ranks[r][name]["shards"]:
            rows, cols = tensor.shape
            want = reference["tables"][table][row:row + rows, col:col + cols]
            assert torch.allclose(tensor, want, atol=TABLE_TOL, rtol=0), f"{name} rank {r} {table}"
            covered[table] += tensor.numel()
    assert covered == {t: v.numel() for t, v in reference["tables"].items()}, "shards do not tile the tables"
    for table, trained in reference["tables"].items():
        moved = (trained - reference["initial_tables"][table]).abs().max().item()
        assert moved > 10 * TABLE_TOL, f"reference table {table} barely moved ({moved}): the check proves nothing"


# ---------------------------------------------------------------- plans alone (no world)


def _plan(sharding: str, seq_dim: int) -> dict[str, dict[str, tuple[str, list[int]]]]:
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    from dmt_fx.baselines.flat import flat_sharding_plan
    from dmt_fx.ir.topology import Topology

    plan = flat_sharding_plan(corpus.PooledSequenceDLRM(0, seq_dim=seq_dim), sharding, Topology(H, L),
                              EmbeddingBagCollectionSharder())
    return {path: {t: (p.sharding_type, p.ranks) for t, p in module.items()} for path, module in plan.plan.items()}


def test_table_row_wise_keeps_each_sequence_table_in_one_host() -> None:
    # column-wise over the host's ranks when the dim splits into multiples of 4, else whole on one rank
    assert _plan("table_row_wise", 8)["sequences"] == {"s_history": ("column_wise", [2, 3]),
                                                       "s_searches": ("column_wise", [0, 1])}
    assert _plan("table_row_wise", 4)["sequences"] == {"s_history": ("table_wise", [2]),
                                                       "s_searches": ("table_wise", [0])}
    assert _plan("table_wise", 8)["sequences"] == {"s_history": ("table_wise", [2]), "s_searches": ("table_wise", [3])}


def test_a_width_torchrec_cannot_shard_is_a_clear_error() -> None:
    from dmt_fx.ir.errors import DMTError

    with pytest.raises(DMTError) as err:
        _plan("row_wise", 6)  # the corpus model's own width: DMT pads it, TorchRec's DMP asserts
    assert "s_history (6)" in str(err.value) and "multiple of 4" in str(err.value)
