"""The peer id exchange (`dmt_fx.runtime.peer_ids`) against TorchRec's `KJTAllToAll`.

Three ranks, one per host, exchange two collections (one with per-sample weights, keys
shared between collections, a host without keys of one collection, empty bags) in ONE
lengths and ONE values (+ one weights) all-to-all, no split handshake; each received KJT
must equal, bit for bit, what TorchRec's KJTAllToAll of that collection alone delivers,
permuted into the receiver's order. The collectives are counted by the traffic meter. The
same holds with int32 on the wire (`wire_ids`, what `distribute` sets for validated ids):
the received KJTs keep the batch's int64 dtypes and the lengths and ids send half the bytes.
And with the id counts announced by the batch agreement (`AgreedValidator`, as
`distribute` wires it), the narrowed lengths and ids cross in ONE all-to-all.
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
from dmt_fx.runtime.peer_ids import PeerIdExchange, narrow_peer_ids, runs
from dmt_fx.runtime.rank_status import AgreedValidator
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


class _Accept(torch.nn.Module):
    """A validator that accepts every batch (the agreement still gathers the counts)."""

    def forward(self, *values: object) -> None:
        return None


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(H))
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))
    exchange = PeerIdExchange(KEYS, ORDERS[rank], WEIGHTED, dist.group.WORLD, RankInfo(rank, TOPOLOGY))
    narrow = PeerIdExchange(KEYS, ORDERS[rank], WEIGHTED, dist.group.WORLD, RankInfo(rank, TOPOLOGY))
    narrow.wire_ids = torch.int32
    fused = PeerIdExchange(KEYS, ORDERS[rank], WEIGHTED, dist.group.WORLD, RankInfo(rank, TOPOLOGY))
    fused.wire_ids = torch.int32
    agreement = AgreedValidator(_Accept(), dist.group.WORLD, RankInfo(rank, TOPOLOGY),
                                [(lambda *kjts: kjts, fused)])
    results, sent = [], []
    for step in range(2):
        kjts = _inputs(rank, step)
        reference = _reference(kjts, rank)
        for module in (exchange, narrow, fused):
            if module is fused:
                agreement(*kjts)  # announces the id counts: the next start sends lengths and ids at once
            with TrafficMeter(TOPOLOGY, rank) as meter:
                got = module(kjts)
            counted = [r.op for r in meter.records]
            results.append((got, reference, counted))
            sent.append([sum(b for _, _, b in r.sent) for r in meter.records])
    torch.save([[(None if g is None else (g.keys(), g.stride(), g.lengths(), g.values(), g.weights_or_none())),
                 (None if r is None else (r.keys(), r.stride(), r.lengths(), r.values(), r.weights_or_none())),
                 ] for got, ref, _ in results for g, r in zip(got, ref)] + [counted for *_, counted in results]
               + [sent], os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.distributed
def test_one_exchange_for_all_collections_equals_torchrec_per_collection(tmp_path) -> None:
    run_world(_worker, tmp_path, nprocs=H, timeout_s=400)
    for rank in range(H):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        pairs, counts, sent = saved[:-7], saved[-7:-1], saved[-1]
        for got, ref in pairs:
            assert (got is None) == (ref is None), rank
            if got is None:
                continue
            assert got[0] == ref[0] and got[1] == ref[1] == H * B
            assert got[2].dtype == ref[2].dtype == got[3].dtype == ref[3].dtype == torch.int64
            assert torch.equal(got[2], ref[2]) and torch.equal(got[3], ref[3])
            assert (got[4] is None) == (ref[4] is None)
            if got[4] is not None:
                assert torch.equal(got[4], ref[4])
        for i, counted in enumerate(counts):  # no handshake, one exchange for all collections
            # lengths, then values and weights; announced: lengths and values at once, weights
            assert counted == ["all_to_all_single"] * (2 if i % 3 == 2 else 3), (i, counted)
        for wide, narrow, fused in zip(sent[0::3], sent[1::3], sent[2::3]):  # per step: int64, int32, announced
            assert narrow[:2] == [b / 2 for b in wide[:2]] and narrow[2] == wide[2], (wide, narrow)  # fp32 weights
            assert fused == [narrow[0] + narrow[1], narrow[2]], (narrow, fused)


def test_runs_coalesce_consecutive_indices() -> None:
    assert runs([3, 4, 5, 0, 2, 3]) == [(3, 6), (0, 1), (2, 4)]
    assert runs([]) == []


@pytest.mark.parametrize("validate", [True, False])
def test_distribute_narrows_the_ids_of_a_validated_model_only(world_of_one, validate) -> None:
    import dmt_fx
    from dmt_fx.models.zoo import default_dlrm

    model, _ = default_dlrm()
    module, _ = dmt_fx.distribute(dmt_fx.transform(model, "1x1", validate_inputs=validate))
    exchanges = [m for m in module.modules() if isinstance(m, PeerIdExchange)]
    assert exchanges and {m.wire_ids for m in exchanges} == {torch.int32 if validate else None}


def test_a_table_an_int32_cannot_index_keeps_the_batch_dtypes() -> None:
    exchange = PeerIdExchange(KEYS, ORDERS[0], WEIGHTED, None, RankInfo(0, TOPOLOGY))
    assert narrow_peer_ids(exchange, 2**31) == 0 and exchange.wire_ids is None
    assert narrow_peer_ids(exchange, 2**31 - 1) == 1 and exchange.wire_ids == torch.int32
