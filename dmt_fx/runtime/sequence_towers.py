"""Sequence tower modules on a rank (`seq_mean`, `seq_attention`; passes/sequence_towers.py).

As with identity towers (`dmt_fx.runtime.sequence`), the ids of every collection ride the
one peer id exchange and each host looks up its sequence tables for H x B samples on
TorchRec's sharded EmbeddingCollection. Then, instead of the jagged return of one row per
id, `HostReducer` runs the host's tower modules on those rows (each sequence feature to its
(H x B, ceil(d / c)) columns; data-parallel inside the host, as a compressing tower block)
and `ReducedSequenceExchange` sends them back in the ONE pooled all-to-all that also carries
the pooled collections' columns: fixed width per sample, no lengths, no jagged splits.
Each sequence collection reaches the model as the KeyedTensor of its reduced features the
logical graph's merge returns.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.fx as fx
import torch.nn as nn
from torch.autograd.profiler import record_function
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.names import GroupKind, tower_module_path
from dmt_fx.ir.stages import Stage, stage_range
from dmt_fx.runtime.exchange import HostLookup, empty_rows, output_dist
from dmt_fx.runtime.groups import RankInfo, host_data_parallel
from dmt_fx.runtime.sequence import HostSequenceExchange, SequenceLookup, SequenceOutput
from dmt_fx.runtime.sequence_lowering import SequenceParts, lower_with_sequences


class HostReducer(nn.Module):
    """The host's tower modules on its sequence rows: per collection, the host slice's
    features reduced and concatenated, (H x B, sum of their widths); no columns where the
    host holds none of the collection."""

    def __init__(self, towers: Sequence[Any], names: Sequence[Sequence[str]]) -> None:
        super().__init__()
        # the logical SequenceTower modules (compiler/tower_modules/sequence.py), by duck type:
        # the runtime imports no compiler module
        self.towers = nn.ModuleList(towers)
        self.names = [list(n) for n in names]
        self.owner: dict[str, Any] = {f: t for t in towers for f in t.features}

    def forward(self, looked_up: Sequence[dict[str, JaggedTensor] | None], rows: int,
                device: torch.device) -> list[torch.Tensor]:
        out = []
        for jts, names in zip(looked_up, self.names):
            if jts is None or not names:
                out.append(empty_rows(rows, device))
                continue
            out.append(torch.cat([self.owner[n].pool_of(n)(jts[n].values(), jts[n].lengths())
                                  for n in names], dim=1))
        return out


class ReducedSequenceExchange(HostSequenceExchange):
    """The id exchange, the pooled and sequence lookups, the host's reduction, ONE pooled
    all-to-all back. Returns one KeyedTensor per pooled collection, then one per sequence
    collection (its reduced features, in the collection's key order)."""

    def __init__(self, pooled: Sequence[HostLookup], weighted: Sequence[bool], pooled_keys: Sequence[Sequence[str]],
                 sequences: Sequence[SequenceLookup], outputs: Sequence[SequenceOutput],
                 id_group: dist.ProcessGroup, group: dist.ProcessGroup, me: RankInfo, *,
                 reducer: nn.Module, widths: dict[str, int]) -> None:
        super().__init__(pooled, weighted, pooled_keys, sequences, outputs, id_group, group, me)
        self.reducer = reducer
        hosts = range(self.num_hosts)
        columns = [[(n, w) for n, w in zip(lk.slices[h].names, lk.slices[h].widths)] for lk in pooled for h in hosts]
        columns += [[(n, widths[n]) for n in lk.slices[h].names] for lk in sequences for h in hosts]
        # host-major: what host h sends is its pooled collections' columns, then its reduced ones
        count = len(pooled) + len(sequences)
        arrive = [(c, n, w) for h in hosts for c in range(count) for n, w in columns[c * self.num_hosts + h]]
        self.arrive_widths = [w for _, _, w in arrive]
        position = {(c, n): i for i, (c, n, _) in enumerate(arrive)}
        self.keys = [list(k) for k in pooled_keys] + [list(o.keys) for o in outputs]
        self.picks = [[position[(c, n)] for n in names] for c, names in enumerate(self.keys)]
        per_host = [sum(w for c in range(count) for _, w in columns[c * self.num_hosts + h]) for h in hosts]
        self.all_back = output_dist(group, per_host)

    def forward(self, *kjts: KeyedJaggedTensor) -> tuple[Any, ...]:
        with record_function(stage_range(Stage.PEER_INPUT)):
            received = self.ids(kjts)
        num_pooled = len(self.host_lookups)
        rows, device = kjts[0].stride() * self.num_hosts, kjts[0].device()
        columns = [lk(kjt, rows, device) for lk, kjt in zip(self.host_lookups, received[:num_pooled])]
        looked_up = [lk(r) for lk, r in zip(self.sequence_lookups, received[num_pooled:])]
        columns += self.reducer(looked_up, rows, device)
        with record_function(stage_range(Stage.PEER_OUTPUT)):
            back = self.all_back(torch.cat(columns, dim=1)).wait()
        pieces = back.split(self.arrive_widths, dim=1)
        with record_function(stage_range(Stage.MERGE)):
            return tuple(KeyedTensor(keys=keys, length_per_key=[self.arrive_widths[i] for i in pick],
                                     values=torch.cat([pieces[i] for i in pick], dim=1))
                         for keys, pick in zip(self.keys, self.picks))


def lower_sequence_towers(lowering: Any, parts: SequenceParts, sites: list, lookups: list, kjts: list,
                          weighted: list[bool], id_group: str) -> list[nn.Module]:
    """The rank module of a model with sequence tower modules; returns the logical tower
    modules this rank runs (its host's), whose state-dict keys are renamed back to theirs."""
    if parts.plain:  # transform refuses these (compiler/sequence_towers.py); a hand-edited graph
        raise DMTError("sequence tower modules over nn.Embedding read as [B, L] sequences",
                       "EmbeddingCollection sequence features", ["keep tower_module='identity'"])
    result, me = lowering.result, lowering.me
    towers = [t for t in result.plan.towers if _has(lowering.gm, tower_module_path(t.index))]
    modules = {t.index: lowering.gm.get_submodule(tower_module_path(t.index)) for t in towers}
    widths = {f: w for m in modules.values() for f, w in zip(m.features, m.widths)}
    mine = [modules[t.index] for t in towers if t.host == me.host]

    def exchange(*args: Any) -> ReducedSequenceExchange:
        sequences: Sequence[SequenceLookup] = args[3]
        reducer: nn.Module = HostReducer(mine, [lk.slices[me.host].names for lk in sequences])
        if any(p.requires_grad for p in reducer.parameters()):  # the host's ranks see different rows
            reducer = host_data_parallel(reducer, lowering.groups.of(GroupKind.INTRA_HOST))
        return ReducedSequenceExchange(*args, reducer=reducer, widths=widths)

    lower_with_sequences(lowering, parts, sites, lookups, kjts, weighted, id_group, exchange=exchange)
    return mine


def freeze_unread(physical: fx.GraphModule, logical: nn.Module) -> list[str]:
    """Parameters of the rank module its graph never reads: layers a rewrite bypassed (the
    encoder of a BERT4Rec-style model, whose masked mean a sequence tower module replaced).
    They stay in the rank module (its checkpoint keeps their keys and values) as frozen
    copies, so that the world's DDP does not wait for their gradients after every backward
    (DDP's ignore list does not help there: it still counts an ignored parameter that gets
    no gradient). Only where the owner is the rank module's own (not a module it shares with
    the logical model: that would change the user's parameters). Returns their names."""
    read: set[int] = set()
    for node in physical.graph.nodes:
        if node.op == "call_module":
            read |= {id(p) for p in physical.get_submodule(str(node.target)).parameters()}
        elif node.op == "get_attr":
            path, _, attr = str(node.target).rpartition(".")
            value = getattr(physical.get_submodule(path) if path else physical, attr)
            read |= {id(p) for p in value.parameters()} if isinstance(value, nn.Module) else {id(value)}
    frozen = []
    for name, param in list(physical.named_parameters()):
        owner_path, _, attr = name.rpartition(".")
        owner = physical.get_submodule(owner_path) if owner_path else physical
        if id(param) in read or not param.requires_grad or owner is _submodule(logical, owner_path):
            continue
        setattr(owner, attr, nn.Parameter(param.detach(), requires_grad=False))  # replaces the registered one
        frozen.append(name)
    return frozen


def _submodule(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path) if path else module
    except AttributeError:
        return None


def _has(gm: nn.Module, path: str) -> bool:
    try:
        gm.get_submodule(path)
    except AttributeError:
        return False
    return True


__all__ = ["HostReducer", "ReducedSequenceExchange", "freeze_unread", "lower_sequence_towers"]
