"""Sequence (unpooled) lookups on a rank: TorchRec's sharded EmbeddingCollection inside the host.

A sequence feature (a torchrec `EmbeddingCollection`'s, or `nn.Embedding` read as [B, L]
ids) is a tower unit like a pooled one (SPTT, docs/runtime.md):
  1. its ids ride the model's ONE peer id exchange (`PeerIdExchange`), pooled and sequence
     collections side by side: host h receives its sequence features for H x B samples;
  2. `SequenceLookup`: the host's tables of the collection, sharded over the host's ranks by
     TorchRec's `EmbeddingCollectionSharder` (a registered intra-host sharding; lookups and
     their all-to-alls stay inside the host), return one row per id (a JaggedTensor per
     feature, the received KJT's order: source host, then sample, then id);
  3. `JaggedReturn`: ONE jagged peer all-to-all sends every source host its samples' rows of
     every sequence feature of every collection. No split handshake: the sender knows the
     rows from what it looked up, the receiver from the lengths it sent itself. Rows of
     tables of different widths travel flattened in one float tensor; the backward is the
     same all-to-all with the splits swapped (`_AllToAll`). With a comm precision
     (`distribute(comm_precision=...)`) the rows and their gradients travel through the
     same qcomms codecs as the pooled exchange (`dmt_fx.runtime.qcomms.compress_exchanges`);
  4. the receiver rebuilds each collection's output as the model reads it: the
     `Dict[str, JaggedTensor]` an EmbeddingCollection returns (its own lengths, the ids as
     weights when it was built with `need_indices`), or an nn.Embedding's [..., D] rows.
Width padding (`dmt_fx.runtime.padded`) applies: tables are sharded padded to a multiple of
4 and cut back to their real width before the peer exchange. Pooled collections of the same
model keep their pooled exchange back (`PooledEmbeddingsAllToAll`); `HostSequenceExchange`
runs both after the one id exchange.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.autograd.profiler import record_function
from torchrec.distributed.comm_ops import get_gradient_division
from torchrec.distributed.types import QuantizedCommCodecs
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.stages import Stage, stage_range
from dmt_fx.runtime.exchange import HostLookup, HostSlice, empty_rows, lookup_order, output_dist
from dmt_fx.runtime.groups import RankInfo
from dmt_fx.runtime.padded import ALIGN, padded_dim
from dmt_fx.runtime.peer_ids import PeerIdExchange


def pad_sequence_collection(ec: EmbeddingCollection) -> EmbeddingCollection:
    """`ec` with its (one) width rounded up to a multiple of 4, on the meta device (the sharder
    allocates the shards); the same tables, features and output names."""
    configs = ec.embedding_configs()
    if all(c.embedding_dim % ALIGN == 0 for c in configs):
        return ec
    padded = [dataclasses.replace(c, embedding_dim=padded_dim(c.embedding_dim)) for c in configs]
    return EmbeddingCollection(padded, device=torch.device("meta"), need_indices=ec.need_indices())


def sequence_dims(ec: EmbeddingCollection) -> dict[str, int]:
    """State-dict key of each table -> its real width."""
    return {f"embeddings.{c.name}.weight": c.embedding_dim for c in ec.embedding_configs()}


def meta_collection(configs: Sequence[EmbeddingConfig]) -> EmbeddingCollection:
    return EmbeddingCollection(list(configs), device=torch.device("meta"))


class SequenceLookup(nn.Module):
    """Step 2 for one sequence collection on this rank: the received ids of H x B samples in,
    one JaggedTensor per feature of the host's slice out (real widths), or None when the host
    owns no table of the collection. `slices[h]`: what host h holds (keys and names aligned:
    an unpooled feature's output is named by its key)."""

    def __init__(self, slices: Sequence[HostSlice], lookup: Any, me: RankInfo) -> None:
        super().__init__()
        # TorchRec's sharded EmbeddingCollection (or None): Any, as nn.Module's attribute
        # typing would make its input_dist / compute / output_dist read as tensors
        self.slices, self.me = list(slices), me
        self.lookup: Any = lookup
        self.names = list(self.slices[me.host].names)
        self.widths = dict(zip(self.names, self.slices[me.host].widths))
        self.order = lookup_order(lookup, self.slices[me.host].keys)

    def forward(self, received: KeyedJaggedTensor | None) -> dict[str, JaggedTensor] | None:
        if self.lookup is None or received is None:
            return None
        ctx = self.lookup.create_context()
        with record_function(stage_range(Stage.INTRA_INPUT)):
            dist_input = self.lookup.input_dist(ctx, received).wait().wait()
        with record_function(stage_range(Stage.LOOKUP)):
            output = self.lookup.compute(ctx, dist_input)
        with record_function(stage_range(Stage.INTRA_OUTPUT)):
            rows = self.lookup.output_dist(ctx, output).wait()
        return {n: _real(rows[n], self.widths[n]) for n in self.names}


def _real(jt: JaggedTensor, width: int) -> JaggedTensor:
    values = jt.values()
    if values.shape[1] != width:  # a padded table (padded.py): its real columns only
        values = values[:, :width]
    return JaggedTensor(values=values, lengths=jt.lengths())


class _AllToAll(torch.autograd.Function):
    """all_to_all_single with known splits; its backward sends the gradients back the same way,
    divided by the group's size when TorchRec divides its own (`get_gradient_division`, on by
    default): with the intra-host all-to-all's division by L, a table's gradient is the
    world mean of the ranks' local-mean losses, as in single-process training.

    `codecs` (TorchRec's qcomms pair, `dmt_fx.runtime.qcomms`; None: fp32): the rows go
    encoded (FP16 / BF16) and are decoded on arrival, the gradients likewise with the
    backward codec, as TorchRec's own sequence all-to-all does (`All2All_Seq_Req`)."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, out_splits: list[int], in_splits: list[int],
                group: dist.ProcessGroup, codecs: QuantizedCommCodecs | None = None) -> torch.Tensor:
        ctx.splits, ctx.group, ctx.codecs = (out_splits, in_splits), group, codecs
        return _exchange(values, out_splits, in_splits, group, None if codecs is None else codecs.forward)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        out_splits, in_splits = ctx.splits
        back = _exchange(grad, in_splits, out_splits, ctx.group, None if ctx.codecs is None else ctx.codecs.backward)
        if get_gradient_division():  # as TorchRec's all-to-alls: each rank's loss is its local batch's mean
            back.div_(dist.get_world_size(ctx.group))
        return back, None, None, None, None


def _exchange(values: torch.Tensor, out_splits: list[int], in_splits: list[int], group: dist.ProcessGroup,
              codec: Any) -> torch.Tensor:
    """One all_to_all_single of float32 `values`, through `codec` (encode, send, decode) if any."""
    if codec is None:
        out = values.new_empty(sum(out_splits))
        dist.all_to_all_single(out, values.contiguous(), out_splits, in_splits, group=group)
        return out
    wire = codec.encode(values.contiguous())
    out = wire.new_empty(sum(codec.calc_quantized_size(n) for n in out_splits))
    dist.all_to_all_single(out, wire, [codec.calc_quantized_size(n) for n in out_splits],
                           [codec.calc_quantized_size(n) for n in in_splits], group=group)
    return codec.decode(out)


class JaggedReturn(nn.Module):
    """Step 3: every sequence collection's rows back to their samples' ranks in one jagged
    peer all-to-all. `slices[c][h]`: what host h holds of collection c."""

    def __init__(self, slices: Sequence[Sequence[HostSlice]], group: dist.ProcessGroup, me: RankInfo) -> None:
        super().__init__()
        self.slices = [list(s) for s in slices]
        self.group, self.me = group, me
        self.num_hosts = me.topology.num_hosts
        self.codecs: QuantizedCommCodecs | None = None  # qcomms (`compress_exchanges`); None: fp32

    def forward(self, looked_up: Sequence[dict[str, JaggedTensor] | None],
                local: Sequence[KeyedJaggedTensor]) -> list[list[torch.Tensor]]:
        """Per collection, per host h, per feature of h's slice: this rank's rows [n, width]."""
        batch = local[0].stride()
        send, in_splits = self.pack(looked_up, batch, local[0].device())
        counts = self.local_counts(local)
        out_splits = [sum(counts[c][k] * w for c, s in enumerate(self.slices) for k, w in zip(s[h].keys, s[h].widths))
                      for h in range(self.num_hosts)]
        with record_function(stage_range(Stage.PEER_OUTPUT)):
            got = _AllToAll.apply(send, out_splits, in_splits, self.group, self.codecs)
        sizes = [counts[c][k] * w for h in range(self.num_hosts) for c, s in enumerate(self.slices)
                 for k, w in zip(s[h].keys, s[h].widths)]
        pieces = iter(got.split(sizes))
        out: list[list[torch.Tensor]] = [[] for _ in self.slices]
        for h in range(self.num_hosts):
            for c, s in enumerate(self.slices):
                out[c] += [next(pieces).view(counts[c][k], w) for k, w in zip(s[h].keys, s[h].widths)]
        return out

    def pack(self, looked_up: Sequence[dict[str, JaggedTensor] | None], batch: int,
             device: torch.device) -> tuple[torch.Tensor, list[int]]:
        """This host's rows, per destination host (its samples' rows of every feature), flat."""
        mine = [(jts[n], w) for jts, s in zip(looked_up, self.slices) if jts is not None
                for n, w in zip(s[self.me.host].names, s[self.me.host].widths)]
        if not mine:  # a host without sequence tables sends nothing, but a tensor that requires
            return empty_rows(0, device).view(-1), [0] * self.num_hosts  # grad: the backward runs on every rank
        edges = torch.stack([jt.offsets()[::batch] for jt, _ in mine]).tolist()  # one read back
        parts, splits = [], [0] * self.num_hosts
        for h in range(self.num_hosts):
            for (jt, w), edge in zip(mine, edges):
                parts.append(jt.values()[edge[h]:edge[h + 1]].reshape(-1))
                splits[h] += (edge[h + 1] - edge[h]) * w
        return torch.cat(parts), splits

    def local_counts(self, local: Sequence[KeyedJaggedTensor]) -> list[dict[str, int]]:
        """Ids per key of this rank's own batch, per collection: the rows that come back."""
        totals = torch.cat([kjt.lengths().view(len(kjt.keys()), -1).sum(1) for kjt in local]).tolist()
        counts, start = [], 0
        for kjt in local:
            counts.append(dict(zip(kjt.keys(), totals[start:start + len(kjt.keys())])))
            start += len(kjt.keys())
        return counts


@dataclasses.dataclass(frozen=True)
class SequenceOutput:
    """How one sequence collection's rows reach the model: an EmbeddingCollection's dict in
    its key order (`keys`), the ids as weights when `need_indices`."""

    keys: tuple[str, ...]
    need_indices: bool = False


class HostSequenceExchange(nn.Module):
    """Identity tower modules of a model with sequence collections: the one id exchange for
    all collections (pooled first, then sequence), the pooled lookups and ONE pooled exchange
    back (as `HostTowerExchange`), the sequence lookups and ONE jagged exchange back.
    Returns one KeyedTensor per pooled collection, then one Dict[str, JaggedTensor] per
    sequence collection, each in the order the model reads it."""

    def __init__(self, pooled: Sequence[HostLookup], weighted: Sequence[bool], pooled_keys: Sequence[Sequence[str]],
                 sequences: Sequence[SequenceLookup], outputs: Sequence[SequenceOutput],
                 id_group: dist.ProcessGroup, group: dist.ProcessGroup, me: RankInfo) -> None:
        super().__init__()
        self.host_lookups = nn.ModuleList(pooled)
        self.sequence_lookups = nn.ModuleList(sequences)
        lookups = list(pooled) + list(sequences)
        keys = [[list(dict.fromkeys(s.keys)) for s in lk.slices] for lk in lookups]
        self.ids = PeerIdExchange(keys, [lk.order for lk in lookups], list(weighted) + [False] * len(sequences),
                                  id_group, me)
        self.num_hosts, self.me = me.topology.num_hosts, me
        self.outputs = list(outputs)
        self.back = JaggedReturn([lk.slices for lk in sequences], group, me)
        self.pooled_back = self.pooled_layout(pooled, pooled_keys, group) if pooled else None
        self.sequence_modules: list[str] = []  # the model's sequence modules, named by the lowering

    def pooled_layout(self, pooled: Sequence[HostLookup], keys: Sequence[Sequence[str]],
                      group: dist.ProcessGroup) -> nn.Module:
        """The pooled exchange back and where each collection's columns arrive."""
        arrive = [(c, n, w) for h in range(self.num_hosts) for c, lk in enumerate(pooled)
                  for n, w in zip(lk.slices[h].names, lk.slices[h].widths)]
        per_host = [sum(w for c, lk in enumerate(pooled) for w in lk.slices[h].widths) for h in range(self.num_hosts)]
        self.arrive_widths = [w for _, _, w in arrive]
        position = {(c, n): i for i, (c, n, _) in enumerate(arrive)}
        self.keys = [list(k) for k in keys]
        self.picks = [[position[(c, n)] for n in names] for c, names in enumerate(self.keys)]
        return output_dist(group, per_host)

    def pipeline_refusal(self) -> DMTError:
        """Why `DMTTrainPipeline` refuses this exchange (checked when the pipeline is built)."""
        modules = self.sequence_modules
        return DMTError("a train pipeline (DMTTrainPipeline, `dmt-fx run --pipeline`) over a model with sequence "
                        f"(unpooled) features, read by {modules}", "pooled features only in DMTTrainPipeline (its stages are the "
                        "pooled exchange's; the jagged sequence exchange has no split into stages)",
                        ["train without the pipeline (leave out --pipeline; in your own loop call the module "
                         "and the optimizer): every step runs the same exchanges, exactly"])

    def dist_start(self, kjts: Sequence[KeyedJaggedTensor]) -> Any:
        """The train pipeline's first stage (`dmt_fx.runtime.pipeline`): not for sequences yet."""
        raise self.pipeline_refusal()

    def forward(self, *kjts: KeyedJaggedTensor) -> tuple[Any, ...]:
        with record_function(stage_range(Stage.PEER_INPUT)):
            received = self.ids(kjts)
        num_pooled = len(self.host_lookups)
        out: list[Any] = []
        if num_pooled:
            out += self.pooled(kjts, received[:num_pooled])
        local = kjts[num_pooled:]
        lookups: list[Any] = list(self.sequence_lookups)
        looked_up = [lk(r) for lk, r in zip(lookups, received[num_pooled:])]
        rows = self.back(looked_up, local)
        with record_function(stage_range(Stage.MERGE)):
            out += [self.as_read(spec, lk.slices, pieces, kjt)
                    for spec, lk, pieces, kjt in zip(self.outputs, lookups, rows, local)]
        return tuple(out)

    def pooled(self, kjts: Sequence[KeyedJaggedTensor], received: Sequence[KeyedJaggedTensor | None]) -> list:
        rows, device = kjts[0].stride() * self.num_hosts, kjts[0].device()
        x = torch.cat([lk(kjt, rows, device) for lk, kjt in zip(self.host_lookups, received)], dim=1)
        assert self.pooled_back is not None  # built whenever there are pooled lookups
        with record_function(stage_range(Stage.PEER_OUTPUT)):
            back = self.pooled_back(x).wait()
        pieces = back.split(self.arrive_widths, dim=1)
        return [KeyedTensor(keys=keys, length_per_key=[self.arrive_widths[i] for i in pick],
                            values=torch.cat([pieces[i] for i in pick], dim=1))
                for keys, pick in zip(self.keys, self.picks)]

    def as_read(self, spec: SequenceOutput, slices: Sequence[HostSlice], pieces: list[torch.Tensor],
                kjt: KeyedJaggedTensor) -> dict[str, JaggedTensor]:
        """One collection's rows (host order) as the model reads them: a JaggedTensor per key."""
        names = [n for h in range(self.num_hosts) for n in slices[h].names]
        rows = dict(zip(names, pieces))
        per_key = kjt.to_dict()
        return {k: JaggedTensor(values=rows[k], lengths=per_key[k].lengths(),
                                weights=per_key[k].values() if spec.need_indices else None) for k in spec.keys}
