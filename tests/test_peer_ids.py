"""The peer id exchange (`dmt_fx.runtime.peer_ids`) against TorchRec's `KJTAllToAll`.

Three ranks, one per host, exchange two collections (one with per-sample weights, keys
shared between collections, a host without keys of one collection, empty bags) in ONE
lengths and ONE values (+ one weights) all-to-all, no split handshake; each received KJT
must equal, bit for bit, what TorchRec's KJTAllToAll of that collection alone delivers,
permuted into the receiver's order. The collectives are counted by the traffic meter.
"""

from __future__ import annotations

import os
import warnings
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from torchrec.distributed.dist_data import KJTAllToAll
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dmt_fx.ir import ops
from dmt_fx.ir.topology import Topology
from dmt_fx.runtime.groups import RankInfo
from dmt_fx.runtime.peer_ids import PeerIdExchange, runs
from dmt_fx.runtime.traffic import TrafficMeter
from tests.harness.launch import run_world

H, B = 3, 4
TOPOLOGY = Topology(H, 1)
# collection -> per host, the keys it looks up (c1 has none on host 1; "a" is in both)
KEYS = [[["a", "c"], ["b"], ["d", "e"]],
        [["x", "a"], [], ["y"]]]
# the order each host's lookup reads (a permutation of its keys)
ORDERS = {0: [["c", "a"], ["a", "x"]], 1: [["b"], []], 2: [["e", "d"], ["y"]]}
WEIGHTED = [False, True]


def _kjt(keys: list[str], seed: int, weighted: bool) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (len(keys) * B,), generator=g)
    lengths[1] = 0  # an empty bag
    values = torch.randint(0, 100, (int(lengths.sum()),), generator=g)
    weights = torch.rand(values.numel(), generator=g) if weighted else None
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=values, lengths=lengths, weights=weights)


def _inputs(rank: int, step: int) -> list[KeyedJaggedTensor]:
    # the model's own key order, not the hosts': the exchange selects
    return [_kjt(["e", "d", "c", "b", "a"], 10 * rank + step, False), _kjt(["y", "a", "x"], 100 + rank + step, True)]


def _reference(kjts: list[KeyedJaggedTensor], me: int) -> list[KeyedJaggedTensor | None]:
    out = []
    for c, kjt in enumerate(kjts):
        keys = [k for per_host in KEYS[c] for k in per_host]
        sent = KJTAllToAll(dist.group.WORLD, [len(k) for k in KEYS[c]])(ops.select_features(kjt, keys))
        got = sent.wait().wait()
        out.append(got.permute([got.keys().index(k) for k in ORDERS[me][c]]) if ORDERS[me][c] else None)
    return out


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(H))
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))
    exchange = PeerIdExchange(KEYS, ORDERS[rank], WEIGHTED, dist.group.WORLD, RankInfo(rank, TOPOLOGY))
    results = []
    for step in range(2):
        kjts = _inputs(rank, step)
        with TrafficMeter(TOPOLOGY, rank) as meter:
            got = exchange(kjts)
        counted = [r.op for r in meter.records]
        results.append((got, _reference(kjts, rank), counted))
    torch.save([[(None if g is None else (g.keys(), g.stride(), g.lengths(), g.values(), g.weights_or_none())),
                 (None if r is None else (r.keys(), r.stride(), r.lengths(), r.values(), r.weights_or_none())),
                 ] for got, ref, _ in results for g, r in zip(got, ref)] + [counted for *_, counted in results],
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.distributed
def test_one_exchange_for_all_collections_equals_torchrec_per_collection(tmp_path) -> None:
    run_world(_worker, tmp_path, nprocs=H, timeout_s=400)
    for rank in range(H):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        pairs, counts = saved[:-2], saved[-2:]
        for got, ref in pairs:
            assert (got is None) == (ref is None), rank
            if got is None:
                continue
            assert got[0] == ref[0] and got[1] == ref[1] == H * B
            assert torch.equal(got[2], ref[2]) and torch.equal(got[3], ref[3])
            assert (got[4] is None) == (ref[4] is None)
            if got[4] is not None:
                assert torch.equal(got[4], ref[4])
        for counted in counts:  # lengths, then values and weights: no handshake, one for all collections
            assert counted == ["all_to_all_single"] * 3, counted


def test_runs_coalesce_consecutive_indices() -> None:
    assert runs([3, 4, 5, 0, 2, 3]) == [(3, 6), (0, 1), (2, 4)]
    assert runs([]) == []
