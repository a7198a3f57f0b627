"""TrafficMeter (a TorchDispatchMode over c10d ops) on a real 2 hosts x 2 ranks gloo world.

The world (4 spawned processes) runs a few SGD steps of examples/torchrec_dlrm.py (4
tables f0..f3 of dim 8: D = 32 pooled floats per sample) under DMT on 2x2 and under the
flat table-wise baseline, then collectives of sizes the test itself chooses. The parent
process checks the measurement against counts it makes WITHOUT the meter:

* ids: the bytes of the lengths and values of the very KJTs each rank was fed
  (`element_size()` of the tensors), and the byte model of `dmt_fx.cost.wire`;
* the dense all-reduce: the dense parameters of the original model (DDP's buckets carry
  every dense gradient once per step), so `dense_allreduce_payload_bytes` is measured;
* known collectives: what the test sent (12 floats, 12 int64, uneven rows ...);
* threads: an all-to-all issued by a backward function on an autograd engine pool thread.

and against the formulas of docs/traffic.md (from the topology, the plan and the
batches, never from the measurement):

* DMT: every collective that crosses hosts runs on the peer group: H-1 cross-host
  messages per rank and no intra-host message; forward cross-host embedding bytes per
  rank = B*D*(H-1)/H*4, backward mirrors it (2x per step); the ids cross hosts once.
* flat table-wise: every all-to-all is on the world: N-1 messages per rank, N-L of them
  cross-host. (With 4 equal-width tables on 4 ranks its cross-host embedding bytes equal
  DMT's exactly, in L x as many messages, each L x smaller.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch

import dmt_fx
from dmt_fx.cost import wire
from dmt_fx.runtime.traffic import TrafficMeter, ddp_allreduce_bytes, ddp_param_bytes
from examples import torchrec_dlrm as ex
from tests.harness.launch import run_world

H, L = 2, 2
N = H * L
B = 8  # local batch
STEPS = 3
SKIP = 1  # warm-up steps left out of summary()
D = ex.EMB_DIM * len(ex.KEYS)  # 32
TOPOLOGY = dmt_fx.Topology(H, L)
TIMEOUT_S = 120
DEPTH = 70  # reentrant backwards deeper than the engine's 60 run on its pool threads


def _init_rank(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(N),
                      LOCAL_RANK=str(rank % L), LOCAL_WORLD_SIZE=str(L), DMT_FX_TIMEOUT_S="60")
    torch.set_num_threads(1)  # 4 ranks share the machine's cores (torchrun does the same)
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=60))


def _train(module, optimizer, meter: TrafficMeter, rank: int) -> None:
    from dmt_fx.jobs.data import labels, slice_batch

    for step in range(STEPS):
        inputs = slice_batch(ex.make_inputs(B * N, step), rank * B, (rank + 1) * B)
        target = labels(B * N, step)[rank * B:(rank + 1) * B]
        with meter:  # entered per step, as the worker does
            loss = torch.nn.functional.binary_cross_entropy_with_logits(module(*inputs), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        meter.step()


class _Deep(torch.autograd.Function):
    """Backward recurses `depth` reentrant backward passes; the innermost one sends 12
    floats to every rank and notes its thread."""

    threads: list[int] = []

    @staticmethod
    def forward(ctx, x, depth):
        ctx.depth = depth
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        if ctx.depth == 0:
            torch.distributed.all_to_all_single(torch.empty(12 * N), torch.ones(12 * N))
            _Deep.threads.append(threading.get_ident())
        else:
            with torch.enable_grad():
                y = torch.ones(1, requires_grad=True)
                torch.autograd.grad(_Deep.apply(y, ctx.depth - 1).sum(), y)
        return grad, None


def _synthetic(rank: int) -> dict:
    """Known collectives on the world and on a peer group; returns their records."""
    import torch.distributed as dist
    from torch.distributed import _functional_collectives as funcol
    from torch.utils._python_dispatch import is_in_torch_dispatch_mode

    peers = [dist.new_group(TOPOLOGY.peer_ranks(local)) for local in range(L)]
    peer = peers[rank % L]
    f = torch.ones(12, dtype=torch.float32)  # 48 bytes
    i = torch.ones(12, dtype=torch.int64)  # 96 bytes
    linear = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(5, 3))  # 18 floats: 72 bytes
    original = dist.all_to_all_single
    with TrafficMeter(TOPOLOGY, rank) as meter:
        dist.all_reduce(f.clone())
        dist.all_gather([torch.empty_like(f) for _ in range(N)], f)
        dist.all_gather_into_tensor(torch.empty(N * 12), f)
        dist.reduce_scatter_tensor(torch.empty(3), f)  # gloo: op=SUM on CPU
        dist.broadcast(i.clone(), src=1)
        # uneven rows: rank r sends (d + 1) rows of 2 int64 to group rank d
        rows = torch.arange(2 * sum(range(1, N + 1)), dtype=torch.int64).reshape(-1, 2)
        recv = torch.empty(N * (rank + 1), 2, dtype=torch.int64)
        dist.all_to_all_single(recv, rows, output_split_sizes=[rank + 1] * N,
                               input_split_sizes=list(range(1, N + 1)))
        dist.all_to_all_single(torch.empty(H * 3, 4), torch.ones(H * 3, 4), group=peer)  # equal splits
        funcol.all_to_all_single(torch.ones(H * 3, 4), None, None, peer).wait()
        torch.ops.torchrec.all_gather_into_tensor(f, 0, H, peer.group_name, False)  # sync-collective op
        linear(torch.ones(2, 5)).sum().backward()  # DDP's C++ Reducer
        _Deep.apply(torch.ones(1, requires_grad=True), DEPTH).sum().backward()
        untouched = dist.all_to_all_single is original
        active = is_in_torch_dispatch_mode()
    return {"records": [dataclasses.asdict(r) for r in meter.records], "untouched": untouched, "active": active,
            "active_after": is_in_torch_dispatch_mode(), "main_thread": threading.get_ident(),
            "deep_threads": _Deep.threads}


def _worker(rank: int, port: int, out_dir: str) -> None:
    _init_rank(rank, port)
    from dmt_fx.baselines import build_baseline

    result = {}
    for name in ("dmt", "flat-table_wise"):
        model, _ = ex.build(0)
        if name == "dmt":
            module, optimizer = dmt_fx.distribute(dmt_fx.transform(model, TOPOLOGY), optimizer_kwargs={"lr": 0.1})
        else:
            module, optimizer = build_baseline(name, model, topology=TOPOLOGY, optimizer_kwargs={"lr": 0.1})
        meter = TrafficMeter(TOPOLOGY, rank)
        _train(module, optimizer, meter, rank)
        result[name] = {"summary": meter.summary(skip=SKIP), "per_step": meter.per_step(),
                        "records": [dataclasses.asdict(r) for r in meter.records],
                        "ddp_param_bytes": ddp_param_bytes(module)}
    result["synthetic"] = _synthetic(rank)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


# ---------------------------------------------------------------- expectations


def _local_kjt(rank: int, step: int):
    from dmt_fx.jobs.data import slice_batch

    return slice_batch(ex.make_inputs(B * N, step), rank * B, (rank + 1) * B)[1]


def _id_bytes(kjt, features) -> int:
    """Bytes of the lengths and ids of `features` for the local batch, read off the tensors."""
    jts = kjt.to_dict()
    return sum(jts[f].lengths().numel() * jts[f].lengths().element_size()
               + jts[f].values().numel() * jts[f].values().element_size() for f in features)


def _model_bytes(kjt, features) -> float:
    """The same, from the byte model: samples x features lengths and the ids counted."""
    jts = kjt.to_dict()
    return wire.kjt_bytes(B, len(features), sum(jts[f].values().numel() for f in features))


def _local_ids(kjt, features) -> int:
    jts = kjt.to_dict()
    return sum(jts[f].values().numel() for f in features)


def _peer_bytes(kjt, features) -> int:
    """What DMT's peer exchange sends of them: int32 lengths and ids (validated ids)."""
    jts = kjt.to_dict()
    return sum((jts[f].lengths().numel() + jts[f].values().numel()) * 4 for f in features)


def _dense_param_bytes() -> int:
    """Bytes of the original model's dense parameters (what DDP all-reduces)."""
    model, _ = ex.build(0)
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embedding_bags" not in n)


def _dmt_features_by_host() -> list[list[str]]:
    model, _ = ex.build(0)
    plan = dmt_fx.tower_plan(dmt_fx.transform(model, TOPOLOGY))
    hosts: list[list[str]] = [[] for _ in range(H)]
    for tower in plan.towers:
        hosts[tower.host] += list(tower.features)
    return hosts


def _flat_features_by_rank() -> list[list[str]]:
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    from dmt_fx.baselines.flat import flat_sharding_plan
    from dmt_fx.runtime.optim import fused_params

    model, _ = ex.build(0)
    sharder = EmbeddingBagCollectionSharder(fused_params=fused_params(torch.optim.SGD, {"lr": 0.1}))
    plan = flat_sharding_plan(model, "table_wise", TOPOLOGY, sharder).plan
    ebc = model.sparse_arch.embedding_bag_collection
    features_of = {c.name: list(c.feature_names) for c in ebc.embedding_bag_configs()}
    ranks: list[list[str]] = [[] for _ in range(N)]
    for table, sharding in plan["sparse_arch.embedding_bag_collection"].items():
        (owner,) = sharding.ranks
        ranks[owner] += features_of[table]
    return ranks


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("traffic")
    started = time.monotonic()
    run_world(_worker, out, nprocs=N, timeout_s=TIMEOUT_S)
    print(f"2x2 world: {time.monotonic() - started:.1f} s")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(N)]


def _tiers(record: dict, rank: int) -> tuple[int, int]:
    """(cross-host, intra-host) messages of one record."""
    per_dst: dict[int, float] = {}
    for dst, _, nbytes in record["sent"]:
        per_dst[dst] = per_dst.get(dst, 0.0) + nbytes
    cross = sum(1 for d, b in per_dst.items() if b > 0 and TOPOLOGY.host_of(d) != TOPOLOGY.host_of(rank))
    intra = sum(1 for d, b in per_dst.items() if b > 0 and TOPOLOGY.host_of(d) == TOPOLOGY.host_of(rank))
    return cross, intra


def _exchanges(result: dict) -> list[dict]:
    return [r for r in result["records"] if r["family"] == "exchange"]


# ---------------------------------------------------------------- DMT


@pytest.mark.distributed
def test_dmt_cross_host_collectives_are_peer_messages(measured):
    for rank, result in enumerate(measured):
        crossing = [r for r in _exchanges(result["dmt"]) if _tiers(r, rank)[0] > 0]
        assert crossing, "DMT sent nothing across hosts"
        for record in crossing:
            assert _tiers(record, rank) == (H - 1, 0), record
            assert sorted(record["group"]) == TOPOLOGY.peer_ranks(rank % L)
            assert record["group_kind"] == "peer"
        # per step 3 collectives: lengths and ids in one (the batch agreement announced the
        # id counts: dmt_fx.runtime.peer_ids); pooled forward, backward
        for row in result["dmt"]["per_step"]:
            assert row["cross_host_collectives"] == 3
            assert row["cross_host_messages"] == row["cross_host_collectives"] * (H - 1)
        assert set(result["dmt"]["summary"]["by_group"]) == {"peer", "intra_host", "mixed"}


@pytest.mark.distributed
def test_dmt_cross_host_embedding_bytes_match_formula(measured):
    forward = B * D * (H - 1) / H * 4  # DMT.md: B*D*(H-1)/H, fp32
    for result in measured:
        for row in result["dmt"]["per_step"]:
            assert row["cross_host_embedding_bytes"] == 2 * forward  # backward mirrors forward
        assert result["dmt"]["summary"]["cross_host_embedding_bytes"] == 2 * forward
        assert result["dmt"]["summary"]["steps"] == STEPS - SKIP


@pytest.mark.distributed
def test_pooled_all_to_all_is_seen_forward_and_backward(measured):
    # TorchRec's PooledEmbeddingsAllToAll: one forward call per step on the peer group, and
    # its backward (run by the autograd engine) sends the gradient: the same bytes.
    for rank, result in enumerate(measured):
        pooled = [r for r in _exchanges(result["dmt"]) if r["group_kind"] == "peer"
                  and all(kind == "embedding" for _, kind, _ in r["sent"])]
        for step in range(STEPS):
            phases = sorted((r["phase"], sum(b for _, _, b in r["sent"])) for r in pooled if r["step"] == step)
            assert phases == [("backward", B * D * 4 / H), ("forward", B * D * 4 / H)], (rank, step)
        ids = [r for r in _exchanges(result["dmt"]) if r["group_kind"] == "peer" and r not in pooled]
        assert len(ids) == STEPS and {r["phase"] for r in ids} == {"forward"}  # lengths and ids in one


@pytest.mark.distributed
def test_dmt_ids_cross_hosts_once(measured):
    hosts = _dmt_features_by_host()
    for rank, result in enumerate(measured):
        me = TOPOLOGY.host_of(rank)
        for step, row in enumerate(result["dmt"]["per_step"]):
            kjt = _local_kjt(rank, step)
            payload = sum(_peer_bytes(kjt, hosts[h]) for h in range(H) if h != me)
            # the payload only: the peer id exchange sends no split-size handshake, and its
            # int64 lengths and ids cross as int32 (validated ids: dmt_fx.runtime.peer_ids)
            assert row["cross_host_id_bytes"] == payload, (rank, step)
            assert 2 * payload == sum(_id_bytes(kjt, hosts[h]) for h in range(H) if h != me)
            assert payload == sum(wire.peer_id_bytes(B, len(hosts[h]), _local_ids(kjt, hosts[h]))
                                  for h in range(H) if h != me)  # the byte model


# ---------------------------------------------------------------- flat table-wise


@pytest.mark.distributed
def test_flat_table_wise_all_to_alls_span_the_world(measured):
    for rank, result in enumerate(measured):
        records = _exchanges(result["flat-table_wise"])
        assert records
        for record in records:
            assert record["op"] == "all_to_all_single"
            assert record["group"] == list(range(N)) and record["group_kind"] == "mixed"
            assert _tiers(record, rank) == (N - L, L - 1), record
        for row in result["flat-table_wise"]["per_step"]:
            assert row["cross_host_messages"] == row["collectives"] * (N - L)
            assert row["intra_host_messages"] == row["collectives"] * (L - 1)


@pytest.mark.distributed
def test_flat_table_wise_bytes(measured):
    # One table of width D/N on every rank: each destination gets B*(D/N) floats, N-L of
    # them on the other hosts: B*D*(N-L)/N = B*D*(H-1)/H, the same bytes as DMT.
    forward = B * (D // N) * 4 * (N - L)
    assert forward == B * D * (H - 1) / H * 4
    features = _flat_features_by_rank()
    for rank, result in enumerate(measured):
        dmt_messages = result["dmt"]["summary"]["cross_host_messages"]
        flat = result["flat-table_wise"]
        for step, row in enumerate(flat["per_step"]):
            assert row["cross_host_embedding_bytes"] == 2 * forward
            kjt = _local_kjt(rank, step)
            others = [d for d in range(N) if TOPOLOGY.host_of(d) != TOPOLOGY.host_of(rank)]
            expected_ids = sum(_id_bytes(kjt, features[d]) for d in others)
            assert row["cross_host_id_bytes"] == expected_ids + wire.handshake_bytes() * (N - L)
        # two cross-host collectives more than DMT (KJTAllToAll's split handshake, and its
        # lengths apart from the ids), each with N-L messages instead of H-1
        dmt_collectives = result["dmt"]["summary"]["cross_host_collectives"]
        assert flat["summary"]["cross_host_collectives"] == dmt_collectives + 2
        assert flat["summary"]["cross_host_messages"] == L * dmt_messages * (dmt_collectives + 2) / dmt_collectives


# ---------------------------------------------------------------- the dense all-reduce (DDP, C++)


@pytest.mark.distributed
def test_ddp_allreduce_is_measured(measured):
    dense = _dense_param_bytes()
    for rank, result in enumerate(measured):
        for name in ("dmt", "flat-table_wise"):
            assert result[name]["ddp_param_bytes"] == dense
            reduces = [r for r in result[name]["records"] if r["family"] == "all_reduce"]
            assert reduces and {r["phase"] for r in reduces} == {"backward"}  # DDP's hooks in backward
            assert {tuple(r["group"]) for r in reduces} == {tuple(range(N))}
            first, *rest = result[name]["per_step"]
            assert first["dense_allreduce_payload_bytes"] >= dense  # + DDP's first-step bookkeeping
            for row in rest:
                assert row["dense_allreduce_payload_bytes"] == dense, (name, rank)  # every gradient once
                assert row["dense_allreduce_bytes"] == pytest.approx(ddp_allreduce_bytes(dense, TOPOLOGY))
            # DDP's bucket-order broadcast (C++, from rank 0) is seen, apart from the exchanges
            broadcasts = sum(row["broadcast_collectives"] for row in result[name]["per_step"])
            assert broadcasts > 0 if rank == 0 else sum(r["broadcast_bytes"] for r in rest) == 0
            # the exchanges' fields keep their meaning: no gradient bytes in them
            summary = result[name]["summary"]
            assert summary["dense_allreduce_bytes"] == pytest.approx(2 * (N - 1) / N * dense)
            assert summary["by_op"]["all_reduce"]["calls"] == summary["dense_allreduce_collectives"]


# ---------------------------------------------------------------- accounting rules


@pytest.mark.distributed
def test_known_collectives_are_counted(measured):
    for rank, result in enumerate(measured):
        synthetic = result["synthetic"]
        assert synthetic["untouched"] and synthetic["active"] and not synthetic["active_after"]
        by_op: dict[str, list[dict]] = {}
        for record in synthetic["records"]:
            by_op.setdefault(record["op"], []).append(record)
        others = [d for d in range(N) if d != rank]
        peer = [d for d in TOPOLOGY.peer_ranks(rank % L) if d != rank]

        def sent(record):
            return {d: (k, b) for d, k, b in record["sent"]}

        ar, ddp = by_op["all_reduce"]
        assert sent(ar) == {d: ("embedding", 2 * 48 / N) for d in others}  # ring model
        assert ar["payload_bytes"] == 48 and ddp["payload_bytes"] == 18 * 4  # nn.Linear(5, 3)
        (ag,) = by_op["all_gather"]
        assert sent(ag) == {d: ("embedding", 48) for d in others}
        (agt,) = by_op["all_gather_into_tensor"]
        assert sent(agt) == {d: ("embedding", 48) for d in others}
        (rst,) = by_op["reduce_scatter_tensor"]
        assert sent(rst) == {d: ("embedding", 48 / N) for d in others}
        (bc,) = by_op["broadcast"]
        assert sent(bc) == ({d: ("id", 96) for d in others} if rank == 1 else {})
        uneven, equal, deep = by_op["all_to_all_single"]
        assert sent(uneven) == {d: ("id", (d + 1) * 2 * 8) for d in others}
        assert sent(equal) == {d: ("embedding", 3 * 4 * 4) for d in peer}
        (fc,) = by_op["funcol.all_to_all_single"]
        assert sent(fc) == {d: ("embedding", 3 * 4 * 4) for d in peer}
        (rec,) = by_op["torchrec.all_gather_into_tensor"]
        assert sent(rec) == {d: ("embedding", 48) for d in peer}
        # a backward on an autograd engine pool thread still carries the mode
        assert sent(deep) == {d: ("embedding", 48) for d in others} and deep["phase"] == "backward"
        assert synthetic["deep_threads"] and synthetic["main_thread"] not in synthetic["deep_threads"]


def test_one_meter_at_a_time():
    meter = TrafficMeter(TOPOLOGY, 0)
    with meter, pytest.raises(dmt_fx.DMTError, match="another is active"), TrafficMeter(TOPOLOGY, 1):
        pass
    with pytest.raises(dmt_fx.DMTError, match="a rank of topology 2x2"):
        TrafficMeter(TOPOLOGY, N)
    assert meter.summary()["steps"] == 0
