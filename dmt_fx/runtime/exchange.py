"""The modules a rank runs in place of the logical tower blocks (SPTT steps 2-5).

  `PeerIdExchange`    step 2 for every collection of the model: one peer id exchange
                      (`dmt_fx.runtime.peer_ids`);
  `HostLookup`        step 3 for one collection: the host's tables sharded over its ranks
                      (TorchRec's input dist, lookup and output dist inside the host);
  `HostTowerExchange` identity tower modules: the id exchange, every collection's host
                      lookup, then step 5, ONE peer pooled all-to-all back
                      (`PooledEmbeddingsAllToAll`) for all collections, as KeyedTensors;
  `HostTowerBlock`    compressing tower modules: the id exchange, every collection's host
                      lookup, the host's tower module (data-parallel inside the host), and
                      only its output back; k towers on a host run as `HostTowers`, each
                      module on its own features' columns, all outputs in the one exchange.
  `SparseDist`        both exchange modules' sparse data dist (peer ids, then TorchRec's
                      input dist per collection) as stages a train pipeline
                      (`dmt_fx.runtime.pipeline`) runs for the next batch during this one.
Each stage runs inside a `record_function` range named by `dmt_fx.ir.stages`.
Each module receives its process groups; which group is which comes from the graph (the lowering).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.autograd.profiler import record_function
from torchrec.distributed.dist_data import PooledEmbeddingsAllToAll
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from dmt_fx._compat import embedding_shardings, non_persistent_buffers, solo_layout, solo_pooled
from dmt_fx.ir import ops
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.stages import Stage, stage_range
from dmt_fx.runtime.groups import RankInfo, runtime_device
from dmt_fx.runtime.padded import real_columns
from dmt_fx.runtime.peer_ids import PeerIdExchange, PendingIds

__all__ = ["HostLookup", "HostSlice", "InFlight", "SparseDist", "HostTowerBlock", "HostTowerExchange", "HostTowers", "tower_columns", "PeerIdExchange", "empty_rows",
           "lookup_order", "non_persistent", "output_dist"]


@dataclasses.dataclass(frozen=True)
class HostSlice:
    """What one host holds of one collection: KJT keys in, embedding names and widths out."""

    keys: tuple[str, ...]
    names: tuple[str, ...]
    widths: tuple[int, ...]


def non_persistent(module: nn.Module) -> None:
    """TorchRec's split-size buffers are runtime state, not part of the model: keep them out
    of state_dict so checkpoints match the original model's keys."""
    non_persistent_buffers(module).update(name for name, _ in module.named_buffers(recurse=False))


def output_dist(group: dist.ProcessGroup, widths: Sequence[int]) -> PooledEmbeddingsAllToAll:
    """Step 5: each peer gets its own rows; `widths` are the columns every host sends."""
    dist_module = PooledEmbeddingsAllToAll(group, list(widths), device=runtime_device())
    non_persistent(dist_module)
    return dist_module


def empty_rows(num_rows: int, device: torch.device) -> torch.Tensor:
    """What a host without tables (or without a tower module) sends: no columns, but a tensor
    that requires grad. TorchRec's pooled all-to-all runs its backward collective only where
    its input requires grad; a rank whose input did not would skip the backward all-to-all
    that its peers wait in, and the job would hang (a collection with no table on
    some host)."""
    return torch.zeros(num_rows, 0, device=device, requires_grad=True)


def lookup_order(lookup: nn.Module | None, keys: Sequence[str]) -> list[str]:
    """The feature order TorchRec's sharded collection reads (its shardings' features, in
    order, each once: a KJT's keys are unique): ids received in this order skip its input
    permute, unless a column-wise table reads a feature once per shard. `keys` (each once)
    when there is no lookup."""
    shardings = embedding_shardings(lookup)
    order = [f for sharding in shardings for f in sharding.feature_names()] if shardings else keys
    return list(dict.fromkeys(order))


class HostLookup(nn.Module):
    """SPTT step 3 for one collection on this rank: the received ids of H x B samples in, the
    host's pooled embeddings out, in the host's canonical order (`names`).

    TorchRec's input dist runs in two stages (`dist_start`: the splits all-to-all;
    `dist_advance`: the tensors all-to-all), so a train pipeline can run them for the next
    batch while this one computes (`dmt_fx.runtime.pipeline`); `forward` runs both itself.

    On a host of one rank, a table-wise lookup's dists send nothing and hand on what they
    get (`dmt_fx._compat.solo_layout`): the ids, which arrive in its feature order, go
    straight to its lookup, and its output straight to the merge (`solo`)."""

    def __init__(self, slices: Sequence[HostSlice], lookup: nn.Module | None, me: RankInfo) -> None:
        super().__init__()
        self.slices, self.me = list(slices), me
        self.lookup = lookup
        self.names = list(self.slices[me.host].names)
        self.order = lookup_order(lookup, self.slices[me.host].keys)
        layout = solo_layout(lookup) if lookup is not None else None
        # (embedding names, dims) of a lookup whose dists change nothing (class doc), else None
        self.solo = layout[1:] if layout is not None and layout[0] == self.order else None

    def dist_start(self, received: KeyedJaggedTensor | None) -> list[Any] | None:
        """Input dist, stage 1 (splits all-to-all in flight): [context, awaitable] ([None, the
        received KJT] for a `solo` lookup), or None when this host owns no table of the
        collection (then there is nothing to send)."""
        if self.lookup is None or received is None:
            return None
        if self.solo is not None:
            return [None, received]  # nothing to send: the lookup reads the ids as they came
        ctx = self.lookup.create_context()
        with record_function(stage_range(Stage.INTRA_INPUT)):
            return [ctx, self.lookup.input_dist(ctx, received)]

    def dist_advance(self, flight: list[Any] | None) -> None:
        """Input dist, stage 2: the splits are in; the ids' tensors all-to-all goes in flight."""
        if flight is not None and self.solo is None:
            with record_function(stage_range(Stage.INTRA_INPUT)):
                flight[1] = flight[1].wait()

    def forward(self, received: KeyedJaggedTensor | None, num_rows: int, device: torch.device) -> torch.Tensor:
        flight = self.dist_start(received)
        self.dist_advance(flight)
        return self.run(flight, num_rows, device)

    def run(self, flight: list[Any] | None, num_rows: int, device: torch.device) -> torch.Tensor:
        """The rest after `dist_advance`: wait for the ids, look up, output dist inside the host."""
        if flight is None:  # this host owns no table of the collection
            return empty_rows(num_rows, device)
        ctx, awaitable = flight
        if self.solo is not None:
            with record_function(stage_range(Stage.LOOKUP)):
                pooled = KeyedTensor(*self.solo, solo_pooled(self.lookup, awaitable))
            with record_function(stage_range(Stage.INTRA_OUTPUT)):
                return self.canonical(pooled)
        with record_function(stage_range(Stage.INTRA_INPUT)):
            dist_input = awaitable.wait()
        with record_function(stage_range(Stage.LOOKUP)):
            output = self.lookup.compute(ctx, dist_input)
        with record_function(stage_range(Stage.INTRA_OUTPUT)):
            return self.canonical(self.lookup.output_dist(ctx, output).wait())

    def canonical(self, pooled: KeyedTensor) -> torch.Tensor:
        """The lookup's output in the host's canonical order, real widths only."""
        # The sharded lookup orders its output by shard placement; peers expect the host's
        # canonical order. Padded tables (padded.py) keep their real columns here, so the
        # peer exchange carries the real widths.
        merged = ops.merge_keyed_tensors((pooled,), self.names).values()
        return real_columns(merged, self.slices[self.me.host].widths)


@dataclasses.dataclass
class InFlight:
    """One batch's sparse data dist between its stages (`SparseDist`): the peer id exchange
    (`ids`), then each collection's intra-host input dist (`lookups`, per `HostLookup.dist_start`)."""

    ids: PendingIds
    rows: int
    device: torch.device
    stage: int = 0
    lookups: list[list[Any] | None] = dataclasses.field(default_factory=list)


class SparseDist:
    """The sparse data dist of a host exchange module as stages a train pipeline can spread
    over the previous batch's step (`dmt_fx.runtime.pipeline`), like TorchRec's
    `input_dist` of a sharded module:
      `dist_start(kjts)`   the peer lengths all-to-all in flight (static splits: no handshake);
      `dist_advance(f)`    1: lengths in, the ids' values (and weights) all-to-all in flight;
                           2: ids in, each collection's intra-host splits all-to-all in flight;
                           3: splits in, each collection's ids all-to-all in flight;
      `push(f)`            the next forward uses `f` instead of sending its own ids.
    Every rank runs the same stages in the same order, so each process group sees its
    collectives in one order on all ranks (gloo matches them by that order)."""

    ids: PeerIdExchange
    host_lookups: nn.ModuleList
    num_hosts: int
    ready: collections.deque

    def dist_start(self, kjts: Sequence[KeyedJaggedTensor]) -> InFlight:
        with record_function(stage_range(Stage.PEER_INPUT)):
            pending = self.ids.start(kjts)
        return InFlight(pending, kjts[0].stride() * self.num_hosts, kjts[0].device())

    def dist_advance(self, flight: InFlight) -> None:
        if flight.stage == 0:
            with record_function(stage_range(Stage.PEER_INPUT)):
                self.ids.send_values(flight.ids)
        elif flight.stage == 1:
            with record_function(stage_range(Stage.PEER_INPUT)):
                received = self.ids.finish(flight.ids)
            flight.lookups = [lk.dist_start(kjt) for lk, kjt in zip(self.host_lookups, received)]
        elif flight.stage == 2:
            for lk, lookup_flight in zip(self.host_lookups, flight.lookups):
                lk.dist_advance(lookup_flight)
        flight.stage += 1

    def push(self, flight: InFlight) -> None:
        while flight.stage < 3:
            self.dist_advance(flight)
        self.ready.append(flight)

    def lookup_all(self, kjts: Sequence[KeyedJaggedTensor]) -> torch.Tensor:
        """Steps 2-3 for every collection: this host's pooled columns for H x B rows,
        collections in model order; from a pushed `InFlight` when the pipeline sent the ids."""
        if self.ready:
            flight = self.ready.popleft()
            self.ids.expected = None  # counts an agreement left would be for a batch already sent
            return side_by_side([lk.run(f, flight.rows, flight.device)
                                 for lk, f in zip(self.host_lookups, flight.lookups)])
        return lookup_all(self.ids, self.host_lookups, kjts, self.num_hosts)


def peer_ids(lookups: Sequence[HostLookup], weighted: Sequence[bool], group: dist.ProcessGroup,
             me: RankInfo) -> PeerIdExchange:
    """The one id exchange of the collections `lookups`, in the order their lookups read."""
    keys = [[list(dict.fromkeys(s.keys)) for s in lk.slices] for lk in lookups]  # a key read by two tables: once
    return PeerIdExchange(keys, [lk.order for lk in lookups], weighted, group, me)


def lookup_all(ids: PeerIdExchange, lookups: Sequence[HostLookup], kjts: Sequence[KeyedJaggedTensor],
               num_hosts: int) -> torch.Tensor:
    """Steps 2-3 for every collection: this host's pooled columns for H x B rows, collections
    in model order."""
    with record_function(stage_range(Stage.PEER_INPUT)):
        received = ids(kjts)
    rows, device = kjts[0].stride() * num_hosts, kjts[0].device()
    return side_by_side([lk(kjt, rows, device) for lk, kjt in zip(lookups, received)])


def side_by_side(columns: Sequence[torch.Tensor]) -> torch.Tensor:
    """The collections' columns in one tensor; one collection's as they are (a cat of one
    tensor would copy it, forward and backward)."""
    return columns[0] if len(columns) == 1 else torch.cat(list(columns), dim=1)


class HostTowerExchange(SparseDist, nn.Module):
    """Identity tower modules for every collection: one id exchange, the host lookups, one
    pooled exchange back (SPTT step 5); returns one KeyedTensor per collection for the local
    batch, its keys in `keys[c]` (the order the model reads them)."""

    def __init__(self, lookups: Sequence[HostLookup], weighted: Sequence[bool], keys: Sequence[Sequence[str]],
                 id_group: dist.ProcessGroup, group: dist.ProcessGroup, me: RankInfo) -> None:
        super().__init__()
        self.host_lookups = nn.ModuleList(lookups)
        self.ids = peer_ids(lookups, weighted, id_group, me)
        self.num_hosts = me.topology.num_hosts
        self.ready = collections.deque()
        # columns as they arrive: per host, per collection, per table
        arrive = [(c, n, w) for h in range(self.num_hosts) for c, lk in enumerate(lookups)
                  for n, w in zip(lk.slices[h].names, lk.slices[h].widths)]
        self.output_dist = output_dist(group, [sum(w for c, _, w in arrive[i:j]) for i, j in self.host_spans(lookups)])
        self.arrive_widths = [w for _, _, w in arrive]
        position = {(c, n): i for i, (c, n, _) in enumerate(arrive)}
        self.keys = [list(k) for k in keys]
        self.picks = [[position[(c, n)] for n in names] for c, names in enumerate(self.keys)]
        # Tables of one width are picked with one index_select on a (rows, tables, width)
        # view (a copy, exact both ways); mixed widths split and concatenate.
        self.one_width = len(set(self.arrive_widths)) == 1
        self.as_arrived = [pick == list(range(len(arrive))) for pick in self.picks]  # nothing to pick
        for c, pick in enumerate(self.picks):  # index buffers: they follow the module to the device
            self.register_buffer(f"pick_{c}", torch.tensor(pick, dtype=torch.long), persistent=False)

    def host_spans(self, lookups: Sequence[HostLookup]) -> list[tuple[int, int]]:
        spans, start = [], 0
        for h in range(self.num_hosts):
            end = start + sum(len(lk.slices[h].names) for lk in lookups)
            spans.append((start, end))
            start = end
        return spans

    def forward(self, *kjts: KeyedJaggedTensor) -> tuple[KeyedTensor, ...]:
        x = self.lookup_all(kjts)
        with record_function(stage_range(Stage.PEER_OUTPUT)):
            rows = self.output_dist(x).wait()
        with record_function(stage_range(Stage.MERGE)):
            return tuple(KeyedTensor(keys=keys, length_per_key=[self.arrive_widths[i] for i in pick],
                                     values=values) for keys, pick, values in zip(self.keys, self.picks, self.merge(rows)))

    def merge(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """Each collection's columns out of the arrived ones, in the order the model reads them."""
        if self.one_width:
            width = self.arrive_widths[0]
            tables = rows.reshape(rows.shape[0], len(self.arrive_widths), width)
            return [rows if as_arrived else
                    tables.index_select(1, getattr(self, f"pick_{c}")).reshape(rows.shape[0], len(pick) * width)
                    for c, (pick, as_arrived) in enumerate(zip(self.picks, self.as_arrived))]
        pieces = rows.split(self.arrive_widths, dim=1)
        return [torch.cat([pieces[i] for i in pick], dim=1) for pick in self.picks]


def tower_columns(lookups: Sequence[HostLookup], features: Sequence[Sequence[str]]) -> list[list[int]]:
    """Each tower's columns in this host's lookup output (collections in model order, each in
    the host's canonical names), in the order of the tower's own features."""
    spans: dict[str, range] = {}
    start = 0
    for lk in lookups:
        for name, width in zip(lk.names, lk.slices[lk.me.host].widths):
            spans[name] = range(start, start + width)
            start += width
    missing = [f for group in features for f in group if f not in spans]
    if missing:
        raise DMTError(f"tower features {missing} not among this host's lookup columns {list(spans)}",
                       "every feature of a host's towers in the host's lookup output",
                       ["put one tower per host (towers_per_domain=1) for this model"])
    return [[c for f in group for c in spans[f]] for group in features]


class HostTowers(nn.Module):
    """The k tower modules of one host, each on its own features' columns of the host's
    lookup output; their outputs side by side (tower index order), as one tower's would be."""

    def __init__(self, modules: Sequence[nn.Module], columns: Sequence[Sequence[int]]) -> None:
        super().__init__()
        self.towers = nn.ModuleList(modules)
        for index, cols in enumerate(columns):  # index buffers: they follow the module to the device
            self.register_buffer(f"columns_{index}", torch.tensor(list(cols), dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        outs = [m(x.index_select(1, getattr(self, f"columns_{i}")))[0] for i, m in enumerate(self.towers)]
        return (torch.cat(outs, dim=1),)


class HostTowerBlock(SparseDist, nn.Module):
    """Compressing tower modules: one id exchange, every collection's host lookup, the host's
    tower module (data-parallel inside the host), and only its output across hosts.

    Returns one (B, out_width) tensor per host, in host order, or per `split_widths` (the
    towers of every host, host-major) when hosts run several towers."""

    def __init__(self, host_lookups: Sequence[HostLookup], weighted: Sequence[bool], tower_module: nn.Module | None,
                 out_widths: Sequence[int], id_group: dist.ProcessGroup, group: dist.ProcessGroup,
                 me: RankInfo, split_widths: Sequence[int] | None = None) -> None:
        super().__init__()
        self.host_lookups = nn.ModuleList(host_lookups)
        self.ids = peer_ids(host_lookups, weighted, id_group, me)
        self.num_hosts = me.topology.num_hosts
        self.ready = collections.deque()
        self.tower_module = tower_module
        self.out_widths = list(out_widths)
        self.split_widths = list(out_widths if split_widths is None else split_widths)
        self.output_dist = output_dist(group, out_widths)

    def forward(self, *kjts: KeyedJaggedTensor) -> tuple[torch.Tensor, ...]:
        # Columns in tower order: collections in model order, features in table order.
        x = self.lookup_all(kjts)
        with record_function(stage_range(Stage.TOWER_MODULE)):
            y = empty_rows(x.shape[0], x.device) if self.tower_module is None else self.tower_module(x)[0]
        with record_function(stage_range(Stage.PEER_OUTPUT)):
            rows = self.output_dist(y).wait()
        return tuple(rows.split(self.split_widths, dim=1))
