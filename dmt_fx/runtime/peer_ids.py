"""SPTT step 2 for every collection at once: one peer id exchange per step, no handshake.

TorchRec's `KJTAllToAll` spends three collectives per KJT: a handshake of split sizes
(lengths, values, batch size per rank), then lengths and values (and weights). The peer
exchange of a DMT model needs fewer, because every rank sends the same local batch B (the
pooled all-to-all back already assumes it):
  1. the lengths' split sizes are static: host h gets B lengths per key of its slices, so
     the lengths all-to-all needs no handshake;
  2. the values' (and weights') split sizes are the sums of the received lengths, per source;
  3. every collection of the model rides the same all-to-alls (below: one, or two with
     per-sample weights): collections are concatenated per destination host;
  4. the receiver reorders (source, key) blocks into key-major order with one FBGEMM
     permute, in the feature order its host's sharded lookup expects, so TorchRec does not
     permute them again.
Collections that do not use per-sample weights send ones as weights when another collection
of the model does (one weights all-to-all for all); their received KJTs drop them.

Narrow ids (`wire_ids`, set by `narrow_peer_ids`): when the model validates its inputs and
every table has at most 2**31 - 1 rows, each validated id fits an int32, and so does each
length of a batch of fewer than 2**31 ids. The lengths and values then cross as int32 and
are cast back to the batch's own dtype on arrival: the lookups read exactly what they read
before, and int64 batches send half the id bytes. A batch is validated and agreed on
before its ids go out (`DMTTrainPipeline` too, for the batch it starts ahead), so an id
that an int32 would wrap never crosses.

One all-to-all for lengths and ids (`expect`): the batch agreement
(`dmt_fx.runtime.rank_status.AgreedValidator`) runs before the exchange on every rank and
can carry, besides its verdict, the ids each rank sends each host (`announce`). With those
counts known and the ids narrowed (both lengths and values int32 on every rank, so every
rank makes the same choice), each destination gets its lengths and its ids in ONE buffer:
one collective where TorchRec's KJTAllToAll spends three (two against four with per-sample
weights, which keep their own all-to-all). Without an agreement (validate_inputs=False) the lengths
go first, as in steps 1-2.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dmt_fx.ir.errors import DMTError
from dmt_fx.runtime.groups import RankInfo

Span = tuple[int, int]
INT32_MAX = 2**31 - 1


def narrow_peer_ids(module: nn.Module, largest_table: int) -> int:
    """Let every peer id exchange in `module` send int32 ids and lengths (module doc); call
    only for a model whose inputs are validated. `largest_table`: the most rows of any table.
    Returns how many exchanges were narrowed (0 when a table has more rows than an int32 holds)."""
    if largest_table > INT32_MAX:
        return 0
    exchanges = [m for m in module.modules() if isinstance(m, PeerIdExchange)]
    for exchange in exchanges:
        exchange.wire_ids = torch.int32
    return len(exchanges)


@dataclasses.dataclass
class PendingIds:
    """One batch's id exchange between its stages (`PeerIdExchange.start`, `send_values`,
    `finish`): what was sent, the received lengths, the collectives in flight."""

    batch: int
    width: int  # lengths this host receives from each source
    dtypes: tuple[torch.dtype, torch.dtype]  # the batch's lengths and values dtypes (arrival casts back)
    values: torch.Tensor
    weights: torch.Tensor | None
    value_splits: list[int]
    lengths: torch.Tensor
    works: list[Any]
    counts: list[int] | None = None  # ids per collection after the recat; None: no ids come
    got_values: torch.Tensor | None = None
    got_weights: torch.Tensor | None = None
    fused: list[int] | None = None  # lengths and ids in one buffer: its split sizes per source


def runs(indices: Sequence[int]) -> list[Span]:
    """Consecutive index runs as [start, end) spans: fewer slices to copy."""
    spans: list[Span] = []
    for i in indices:
        if spans and spans[-1][1] == i:
            spans[-1] = (spans[-1][0], i + 1)
        else:
            spans.append((i, i + 1))
    return spans


class PeerIdExchange(nn.Module):
    """Sends each host the ids of its slices of every collection; returns this host's KJTs.

    `keys[c][h]`: the keys of collection c that host h looks up, in the order the host's
    slice lists them; `orders[c]`: the key order this host's lookup of c reads (its sharded
    module's feature order); `weighted[c]`: whether c's lookup reads per-sample weights."""

    def __init__(self, keys: Sequence[Sequence[Sequence[str]]], orders: Sequence[Sequence[str]],
                 weighted: Sequence[bool], group: dist.ProcessGroup, me: RankInfo) -> None:
        super().__init__()
        self.keys = [[list(k) for k in per_host] for per_host in keys]
        self.orders = [list(o) for o in orders]
        self.weighted = list(weighted)
        self.any_weighted = any(self.weighted)
        self.group, self.me = group, me
        self.num_hosts = me.topology.num_hosts
        self.spans: dict[tuple[int, tuple[str, ...]], list[list[Span]]] = {}
        self.wire_ids: torch.dtype | None = None  # None: lengths and values cross as given (module doc)
        # (ids this rank sends each host, ids each host sends it) for the next `start`, from
        # the batch agreement (`expect`); None: the lengths go first
        self.expected: tuple[list[int], list[int]] | None = None
        self.recat = self.receive_order()
        self.sum_rows, self.sum_slots = self.size_index()

    def receive_order(self) -> torch.Tensor:
        """Rows (source, key) of the received lengths, in key-major order per collection."""
        sent = [(c, k) for c, per_host in enumerate(self.keys) for k in per_host[self.me.host]]
        position = {}
        for i, entry in enumerate(sent):
            position.setdefault(entry, i)  # a key read by two tables is sent twice: take one
        rows = [src * len(sent) + position[(c, k)]
                for c, order in enumerate(self.orders) for k in order for src in range(self.num_hosts)]
        return torch.tensor(rows, dtype=torch.int32)

    def size_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Which received row (source, key) adds to which size: the ids each source sends
        (slots 0..H-1) and, after the recat, the ids of each collection (slots H..H+C-1).
        Both come from one sum and ONE read back to the host (a GPU sync per step, not two)."""
        sent = sum(len(per_host[self.me.host]) for per_host in self.keys)
        sources = [src for src in range(self.num_hosts) for _ in range(sent)]
        collections = [self.num_hosts + c for c, order in enumerate(self.orders)
                       for _ in range(len(order) * self.num_hosts)]
        rows = list(range(len(sources))) + self.recat.tolist()
        return torch.tensor(rows, dtype=torch.int64), torch.tensor(sources + collections, dtype=torch.int64)

    def forward(self, kjts: Sequence[KeyedJaggedTensor]) -> list[KeyedJaggedTensor | None]:
        return self.finish(self.send_values(self.start(kjts)))

    # A train pipeline (dmt_fx.runtime.pipeline) runs the three stages apart, for the next
    # batch while this one computes: the lengths' splits are static, so `start` needs no
    # handshake; the values' splits are the received lengths, so `send_values` waits for them.

    def announce(self, kjts: Sequence[KeyedJaggedTensor]) -> list[int]:
        """The ids `start(kjts)` will send each host (no tensor is built: per-key offsets)."""
        counts = [0] * self.num_hosts
        for c, kjt in enumerate(kjts):
            spans, offsets = self.spans_of(c, kjt), kjt.offset_per_key()
            for h in range(self.num_hosts):
                counts[h] += sum(offsets[end] - offsets[begin] for begin, end in spans[h])
        return counts

    def expect(self, sent: list[int], incoming: list[int]) -> None:
        """The agreed counts for the next `start`: the ids this rank sends each host, and the
        ids each host sends it. Used once, and only with narrowed ids (module doc)."""
        self.expected = (list(sent), list(incoming))

    def start(self, kjts: Sequence[KeyedJaggedTensor]) -> PendingIds:
        """Stage 1: pack, the lengths all-to-all (or the lengths and ids one) in flight."""
        batch = kjts[0].stride()
        expected, self.expected = self.expected, None
        lengths, values, weights, value_splits = self.pack(kjts, batch)
        dtypes = (lengths.dtype, values.dtype)
        if self.wire_ids is not None and values.numel() > INT32_MAX:
            raise DMTError(f"a batch of {values.numel()} ids on rank {self.me.rank}",
                           f"fewer than 2**31 ids per batch, so that its lengths cross as {self.wire_ids}",
                           ["split the batch", "transform with validate_inputs=False (ids then cross as given)"])
        lengths, values = self.to_wire(lengths), self.to_wire(values)
        width = sum(len(per_host[self.me.host]) for per_host in self.keys) * batch
        in_splits = [sum(len(p[h]) for p in self.keys) * batch for h in range(self.num_hosts)]
        if expected is not None and self.wire_ids is not None:
            return self.start_fused(PendingIds(batch, width, dtypes, values, weights, value_splits, lengths, []),
                                    in_splits, expected)
        out_splits = [width] * self.num_hosts
        got = lengths.new_empty(sum(out_splits))
        work = dist.all_to_all_single(got, lengths, out_splits, in_splits, group=self.group, async_op=True)
        return PendingIds(batch, width, dtypes, values, weights, value_splits, got, [work])

    def start_fused(self, pending: PendingIds, length_splits: list[int],
                    expected: tuple[list[int], list[int]]) -> PendingIds:
        """Stage 1 with the agreed counts: each host's lengths then its ids, one all-to-all."""
        sent, incoming = expected
        if sent != pending.value_splits:  # the agreement counted another batch: a bug, not bad input
            raise DMTError(f"rank {self.me.rank} packed {pending.value_splits} ids per host after announcing {sent}",
                           "the batch the agreement counted", ["report this; transform with validate_inputs=False "
                                                                "meanwhile (the lengths then go first)"])
        pieces = zip(pending.lengths.split(length_splits), pending.values.split(sent))
        buffer = torch.cat([t for pair in pieces for t in pair])
        pending.fused = [pending.width + n for n in incoming]
        got = buffer.new_empty(sum(pending.fused))
        pending.works = [dist.all_to_all_single(got, buffer, pending.fused,
                                                [n + m for n, m in zip(length_splits, sent)],
                                                group=self.group, async_op=True)]
        pending.lengths = got
        return pending

    def send_values(self, pending: PendingIds) -> PendingIds:
        """Stage 2: the lengths are in; the values (and weights) all-to-all in flight."""
        for work in pending.works:
            work.wait()
        if pending.fused is not None:
            return self.split_fused(pending)
        splits = [0] * self.num_hosts
        if pending.width:  # else this host reads no key of any collection: no ids come
            sizes = self.received_sizes(pending.lengths, pending.batch)
            splits, pending.counts = sizes[:self.num_hosts], sizes[self.num_hosts:]
        pending.got_values, pending.got_weights, pending.works = self.values_in_flight(
            pending.values, pending.weights, splits, pending.value_splits)
        return pending

    def split_fused(self, pending: PendingIds) -> PendingIds:
        """Stage 2 of the fused exchange: the received buffer's lengths and ids apart; only
        per-sample weights still travel (their split sizes are the agreed counts)."""
        assert pending.fused is not None  # send_values comes here only for a fused start
        chunks = pending.lengths.split(pending.fused)
        incoming = [n - pending.width for n in pending.fused]
        pending.lengths = torch.cat([chunk[:pending.width] for chunk in chunks])
        pending.got_values = torch.cat([chunk[pending.width:] for chunk in chunks])
        pending.works, pending.got_weights = [], None
        if pending.width:
            pending.counts = self.received_sizes(pending.lengths, pending.batch)[self.num_hosts:]
        if pending.weights is not None:
            got = pending.weights.new_empty(sum(incoming))
            pending.works = [dist.all_to_all_single(got, pending.weights, incoming, pending.value_splits,
                                                    group=self.group, async_op=True)]
            pending.got_weights = got
        return pending

    def finish(self, pending: PendingIds) -> list[KeyedJaggedTensor | None]:
        """Stage 3: the ids are in; this host's KJTs."""
        for work in pending.works:
            work.wait()
        if pending.counts is None:
            return [None] * len(self.orders)
        lengths_dtype, values_dtype = pending.dtypes
        assert pending.got_values is not None  # set by send_values whenever ids come
        return self.unpack(pending.lengths.to(lengths_dtype), pending.got_values.to(values_dtype),
                           pending.got_weights, pending.batch, pending.counts)

    def to_wire(self, ids: torch.Tensor) -> torch.Tensor:
        """`ids` (lengths or values) as they cross: narrowed to `wire_ids` when set."""
        if self.wire_ids is None or ids.dtype == self.wire_ids:
            return ids
        return ids.to(self.wire_ids)

    def received_sizes(self, lengths: torch.Tensor, batch: int) -> list[int]:
        """Ids per source, then per collection after the recat: one read back."""
        if self.sum_rows.device != lengths.device:  # built on the CPU; under NCCL the ids are on the GPU
            self.sum_rows, self.sum_slots = self.sum_rows.to(lengths.device), self.sum_slots.to(lengths.device)
        row_sums = lengths.view(-1, batch).sum(1)  # batch > 0: a host that gets ids gets B per key
        sizes = row_sums.new_zeros(self.num_hosts + len(self.orders))
        return sizes.index_add_(0, self.sum_slots, row_sums[self.sum_rows]).tolist()

    # ------------------------------------------------------------ send

    def spans_of(self, c: int, kjt: KeyedJaggedTensor) -> list[list[Span]]:
        """Per destination host, the index runs of its keys in this KJT (cached per key list)."""
        cache_key = (c, tuple(kjt.keys()))
        if cache_key not in self.spans:
            index = {k: i for i, k in enumerate(kjt.keys())}
            self.spans[cache_key] = [runs([index[k] for k in per_host]) for per_host in self.keys[c]]
        return self.spans[cache_key]

    def pack(self, kjts: Sequence[KeyedJaggedTensor], batch: int):
        """Lengths, values, weights in (destination host, collection, key) order, and the
        values' split sizes per destination."""
        lengths, values, weights = [], [], []
        value_splits = [0] * self.num_hosts
        tables = [(kjt, self.spans_of(c, kjt), kjt.offset_per_key()) for c, kjt in enumerate(kjts)]
        for h in range(self.num_hosts):
            for c, (kjt, spans, offsets) in enumerate(tables):
                for start, end in spans[h]:
                    lengths.append(kjt.lengths()[start * batch:end * batch])
                    values.append(kjt.values()[offsets[start]:offsets[end]])
                    if self.any_weighted:
                        weights.append(self.weights_of(c, kjt, offsets[start], offsets[end]))
                    value_splits[h] += offsets[end] - offsets[start]
        device = kjts[0].device()
        return (cat(lengths, kjts[0].lengths(), device), cat(values, kjts[0].values(), device),
                cat(weights, None, device) if self.any_weighted else None, value_splits)

    def weights_of(self, c: int, kjt: KeyedJaggedTensor, start: int, end: int) -> torch.Tensor:
        if self.weighted[c]:
            return kjt.weights()[start:end]
        return torch.ones(end - start, device=kjt.device())

    def all_to_all(self, tensor: torch.Tensor, out_splits: list[int], in_splits: list[int]) -> torch.Tensor:
        out = tensor.new_empty(sum(out_splits))
        dist.all_to_all_single(out, tensor, out_splits, in_splits, group=self.group)
        return out

    def all_to_all_values(self, values: torch.Tensor, weights: torch.Tensor | None, out_splits: list[int],
                          in_splits: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Values and weights share their split sizes: both in flight at once."""
        got_values, got_weights, works = self.values_in_flight(values, weights, out_splits, in_splits)
        for work in works:
            work.wait()
        return got_values, got_weights

    def values_in_flight(self, values: torch.Tensor, weights: torch.Tensor | None, out_splits: list[int],
                         in_splits: list[int]) -> tuple[torch.Tensor, torch.Tensor | None, list[Any]]:
        """The values (and weights) all-to-alls issued, not waited for."""
        got_values = values.new_empty(sum(out_splits))
        works = [dist.all_to_all_single(got_values, values, out_splits, in_splits, group=self.group, async_op=True)]
        got_weights = None
        if weights is not None:
            got_weights = weights.new_empty(sum(out_splits))
            works.append(dist.all_to_all_single(got_weights, weights, out_splits, in_splits, group=self.group,
                                                async_op=True))
        return got_values, got_weights, works

    # ------------------------------------------------------------ receive

    def unpack(self, lengths: torch.Tensor, values: torch.Tensor, weights: torch.Tensor | None,
               batch: int, counts: list[int]) -> list[KeyedJaggedTensor | None]:
        """One KJT per collection (None where this host reads none of its keys), key-major,
        stride H x B, keys in the lookup's order."""
        if self.recat.numel() == 0:
            return [None] * len(self.orders)
        # No output size hint: a column-wise sharded lookup reads a feature once per shard,
        # so the recat may repeat rows and the output outgrow the input.
        if self.recat.device != lengths.device:  # built on the CPU; under NCCL the ids are on the GPU
            self.recat = self.recat.to(lengths.device)
        lengths, values, weights = torch.ops.fbgemm.permute_2D_sparse_data(
            self.recat, lengths.view(-1, batch), values, weights, None)
        stride = batch * self.num_hosts
        rows = [len(order) * stride for order in self.orders]
        per_lengths = lengths.view(-1).split(rows)
        per_values = values.split(counts)
        per_weights = weights.split(counts) if weights is not None else [None] * len(counts)
        return [KeyedJaggedTensor(keys=order, values=v, lengths=n, stride=stride,
                                  weights=w if self.weighted[c] else None) if order else None
                for c, (order, n, v, w) in enumerate(zip(self.orders, per_lengths, per_values, per_weights))]


def cat(pieces: list[torch.Tensor], like: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """The pieces concatenated; an empty tensor of `like`'s dtype (float for weights) if none."""
    if pieces:
        return torch.cat(pieces)
    dtype = like.dtype if like is not None else torch.float32
    return torch.empty(0, dtype=dtype, device=device)
