"""The traffic of a pooled + sequence model, measured by the meter, equals a count made from the batch.

One real 2x2 torchrun launch (gloo, emulated hosts) trains the built-in target
`dmt_fx.models.sequences:sequence_model` (8 pooled features and 2 sequence features of
dim D = 16, sequence lengths 0..20) as flat-table_wise, flat-row_wise and dmt-identity, and
the +fp16 twins of flat-table_wise and dmt-identity (qcomms: FP16 rows forward, BF16
gradients backward, 2 bytes an element). For every rank, the meter's cross-host embedding
bytes per step equal a count made here from the batches the worker trains on (step s:
`make_inputs(N x B, s)`, rank r's rows [r B, (r+1) B)) and the placements alone:

* a sequence row is one id's D floats: an id of sample i of feature f crosses hosts when the
  rank (flat: the table's owner, for row-wise the owner of the id's row block; DMT: a rank of
  the feature's host) is on another host than sample i's rank; it crosses once forward (the
  row) and once backward (its gradient): lengths x D x 4 bytes;
* a pooled feature crosses as B x D x 4 per direction: flat table-wise from the owner to
  every rank of the other host and back, DMT from the feature's host to the peer rank and
  back; flat row-wise's pooled exchange is its reduce-scatter / all-gather (data-independent,
  B x F x D x 4 per cross-host rank and direction, counted under those ops).

So DMT's jagged sequence exchange, TorchRec's sequence all-to-all (table-wise and row-wise)
and both pooled exchanges are each checked to the byte; the +fp16 twins send exactly half
of every embedding byte (rows and gradients), the same id bytes and messages, and train
within 2^-8 x max |output| of their fp32 twin without being bitwise equal to it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import pytest
import torch

import dmt_fx
from dmt_fx.ir.topology import Topology
from dmt_fx.jobs.data import slice_batch
from dmt_fx.models import sequences as target
from tests.harness.launch import launch_job

TOPOLOGY = Topology(2, 2)
H, L, N = 2, 2, 4
B, STEPS, WARMUP = 16, 3, 1
METERED = (1, 2)  # the worker's metered steps: --traffic-steps 2 after 1 warm-up step
TARGET = "dmt_fx.models.sequences:sequence_model"
VARIANTS = ("flat-table_wise", "flat-row_wise", "dmt-identity", "flat-table_wise+fp16", "dmt-identity+fp16")
TOLERANCE = 2.0 ** -8  # of max |output| (as tests/test_qcomms.py)
D = target.DIM


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[list[dict], torch.Tensor]]:
    out = str(tmp_path_factory.mktemp("sequence_traffic"))
    args = ["--target", TARGET, "--topology", str(TOPOLOGY), "--variants", ",".join(VARIANTS),
            "--steps", str(STEPS), "--warmup", str(WARMUP), "--traffic-steps", "2", "--profile-steps", "0",
            "--batch-size", str(B), "--lr", "0.05", "--record-outputs", "--out", out, "--timeout-s", "60"]
    result = launch_job(TOPOLOGY, args, out, deadline_s=400, grace_s=30)
    assert result.ok, result.log_tail(40)
    found = {}
    for v in VARIANTS:
        ranks = [json.load(open(os.path.join(out, v, f"rank{r}.json"))) for r in range(N)]
        assert all(tuple(r["metered_steps"]) == METERED for r in ranks)
        outputs = torch.cat([torch.stack(torch.load(os.path.join(out, v, f"outputs_rank{r}.pt"))) for r in range(N)],
                            dim=1)
        found[v] = ranks, outputs
    return found


# ---------------------------------------------------------------- the count from the batch


def _local_ids(step: int) -> list[dict[str, torch.Tensor]]:
    """Per rank: each sequence feature's ids of its local batch at `step`."""
    batch = target.make_inputs(B * N, step)
    return [{k: jt.values() for k, jt in slice_batch(batch, r * B, (r + 1) * B)[2].to_dict().items()}
            for r in range(N)]


def _flat_plan(sharding: str) -> dict[str, Any]:
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    from dmt_fx.baselines.flat import flat_sharding_plan
    from dmt_fx.runtime.optim import fused_params

    model, _ = target.sequence_model(0)
    sharder = EmbeddingBagCollectionSharder(fused_params=fused_params(torch.optim.SGD, {"lr": 0.05}))
    plan = flat_sharding_plan(model, sharding, TOPOLOGY, sharder).plan
    return {**plan["pooled"], **plan["sequences"]}


Owner = Callable[[int, torch.Tensor], torch.Tensor]  # (sample's rank, ids) -> the rank looking each up


def _row_owner(sharding: Any) -> Owner:
    """The rank holding each id's row (TorchRec's row-wise shards, from the plan)."""
    shards = sorted((s.shard_offsets[0], s.shard_offsets[0] + s.shard_sizes[0], s.placement.rank())
                    for s in sharding.sharding_spec.shards)
    bounds = torch.tensor([stop for _, stop, _ in shards])
    ranks = torch.tensor([rank for _, _, rank in shards])
    return lambda _, ids: ranks[torch.bucketize(ids, bounds, right=True)]


def _fixed_owner(owner: int) -> Owner:
    return lambda _, ids: torch.full_like(ids, owner)


def _cross(a: int, b: int) -> bool:
    return TOPOLOGY.host_of(a) != TOPOLOGY.host_of(b)


def _sequence_rows(rank: int, owners: dict[str, Owner]) -> float:
    """Rows (and gradients) this rank sends across hosts per step, mean over the metered steps;
    `owners[f]`: who looks up each id of feature f."""
    total = 0
    for step in METERED:
        ids = _local_ids(step)
        for f, owner_of in owners.items():
            for sample_rank in range(N):
                owner = owner_of(sample_rank, ids[sample_rank][f])
                if sample_rank == rank:  # gradients of my samples' rows go back to their owners
                    total += sum(_cross(rank, int(o)) for o in owner)
                elif _cross(rank, sample_rank):  # rows I looked up for the other host's samples
                    total += int((owner == rank).sum())
    return total / len(METERED)


def _flat_parts(sharding: str, rank: int) -> tuple[float, float]:
    """(pooled, sequence) embedding elements this rank sends across hosts per step."""
    plan = _flat_plan(sharding)
    owners = {f: _row_owner(plan[f"s_{f}"]) if sharding == "row_wise" else _fixed_owner(plan[f"s_{f}"].ranks[0])
              for f in target.SEQUENCE_ROWS}
    if sharding == "row_wise":  # reduce-scatter + all-gather: every cross-host rank, B x F x D each way
        pooled = 2 * B * len(target.POOLED_ROWS) * D * sum(_cross(rank, r) for r in range(N))
    else:
        pooled = 0
        for f in target.POOLED_ROWS:
            owner = plan[f"t_{f}"].ranks[0]
            if owner == rank:
                pooled += B * D * sum(_cross(rank, r) for r in range(N))  # forward, to every other-host rank
            elif _cross(rank, owner):
                pooled += B * D  # backward, my samples' gradient to the owner
    return pooled, _sequence_rows(rank, owners) * D


def _dmt_parts(rank: int) -> tuple[float, float]:
    model, batch = target.sequence_model(0)
    host_of = {f: t.host for t in dmt_fx.tower_plan(dmt_fx.transform(model, TOPOLOGY, example_inputs=batch)).towers
               for f in t.features}
    # a sample's rows come from the rank of the feature's host with the sample's local rank
    owners: dict[str, Owner] = {f: (lambda host: lambda r, ids: torch.full_like(ids, host * L + r % L))(host_of[f])
                                for f in target.SEQUENCE_ROWS}
    # pooled: my host's features to each peer's samples (forward), my samples' other-host ones back
    mine = sum(1 for f in target.POOLED_ROWS if host_of[f] == TOPOLOGY.host_of(rank))
    pooled = B * D * (mine * (H - 1) + len(target.POOLED_ROWS) - mine)
    return pooled, _sequence_rows(rank, owners) * D


def _parts(variant: str, rank: int) -> tuple[float, float]:
    fp32 = variant.partition("+")[0]
    return _dmt_parts(rank) if fp32 == "dmt-identity" else _flat_parts(fp32[len("flat-"):], rank)


def _expected(variant: str, rank: int) -> float:
    return sum(_parts(variant, rank)) * (2 if variant.endswith("+fp16") else 4)


def counted(batch: int) -> dict[str, tuple[float, float]]:
    """Per fp32 variant at local batch `batch`: (sequence, all) cross-host embedding bytes per
    rank per step, mean over ranks: the benchmark report's count
    (`python -m tests.test_sequence_traffic 32`)."""
    global B
    saved, B = B, batch
    try:
        return {v: (sum(_parts(v, r)[1] for r in range(N)) * 4 / N, sum(_expected(v, r) for r in range(N)) / N)
                for v in VARIANTS if "+" not in v}
    finally:
        B = saved


@pytest.mark.distributed
@pytest.mark.parametrize("variant", VARIANTS)
def test_cross_host_embedding_bytes_equal_the_count_from_the_batch(variant, runs) -> None:
    ranks, _ = runs[variant]
    for rank, record in enumerate(ranks):
        assert record["traffic"]["cross_host_embedding_bytes"] == _expected(variant, rank), (variant, rank)


@pytest.mark.distributed
@pytest.mark.parametrize("fp32", ["flat-table_wise", "dmt-identity"])
def test_fp16_halves_rows_and_gradients_and_trains_close(fp32, runs) -> None:
    (a_ranks, ref), (b_ranks, got) = runs[fp32], runs[f"{fp32}+fp16"]
    for a, b in zip(a_ranks, b_ranks):
        a, b = a["traffic"], b["traffic"]
        assert b["cross_host_embedding_bytes"] * 2 == a["cross_host_embedding_bytes"] > 0
        assert b["cross_host_id_bytes"] == a["cross_host_id_bytes"] > 0
        assert b["cross_host_messages"] == a["cross_host_messages"]
    diff = (got - ref).abs().max().item()
    assert 0 < diff <= TOLERANCE * ref.abs().max().item(), (fp32, diff)


# ---------------------------------------------------------------- where the codecs go (one process)


@pytest.mark.parametrize("tower_module,compression", [("identity", 1), ("seq_attention", 4)])
def test_comm_precision_reaches_every_peer_exchange_of_a_sequence_model(world_of_one, tower_module,
                                                                        compression) -> None:
    """The pooled exchange back (a sequence tower module's too) and the jagged sequence
    exchange get the codecs; TorchRec's intra-host output dists do not."""
    from torchrec.distributed.dist_data import PooledEmbeddingsAllToAll

    from dmt_fx.runtime.sequence import HostSequenceExchange

    model, batch = target.sequence_model(0)
    gm = dmt_fx.transform(model, "1x1", example_inputs=batch, tower_module=tower_module, compression=compression)
    module, optimizer = dmt_fx.distribute(gm, comm_precision="fp16")
    (exchange,) = [m for m in module.modules() if isinstance(m, HostSequenceExchange)]
    peer = [m for m in exchange.children() if isinstance(m, PooledEmbeddingsAllToAll)]
    used = getattr(exchange, "all_back", exchange.pooled_back)  # a tower module's reduced exchange: all_back
    assert used in peer and all(m._codecs is not None for m in peer) and exchange.back.codecs is not None
    inner = [m for m in module.modules() if isinstance(m, PooledEmbeddingsAllToAll) and m not in peer]
    assert all(m._codecs is None for m in inner)
    module(*batch).sum().backward()
    optimizer.step()


if __name__ == "__main__":
    import sys

    for name, (sequence, total) in counted(int(sys.argv[1]) if len(sys.argv) > 1 else B).items():
        print(f"{name}: sequence rows + gradients {sequence:,.0f} B of {total:,.0f} B cross-host embedding bytes")
