"""The per-rank lowering of a model with sequence (unpooled) features (`dmt_fx.runtime.sequence`).

`_Lowering.run` (lowering.py) hands models with sequence features here when the tower
modules are the identity. On rank (h, l):
  1. `sequence_parts`: the torchrec EmbeddingCollection sites, and the plain nn.Embedding
     lookups read as [B, L] ids (grouped by width: an EmbeddingCollection has one), whose
     tower exchanges feed the one peer id exchange;
  2. per sequence collection, host h's tables in one EmbeddingCollection, sharded over the
     host's ranks by `EmbeddingCollectionSharder` (the host's intra-host sharding, fused
     optimizer, width padding), the original weights copied in; a plain lookup's local ids
     become a KJT (`PlainSequenceKJT`: one sequence of L ids per sample);
  3. one `HostSequenceExchange` for every collection of the model (pooled ones too); each
     pooled merge and plain pooled output reads its item as in `lower_exchange`, each
     EmbeddingCollection's merge its Dict[str, JaggedTensor], each plain sequence lookup's
     users its rows in the original [..., D] shape (`sequence_rows`).
The tables' state-dict keys are renamed back to the original's like the pooled ones.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from dmt_fx.ir.collections import sub_sequence_collection
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.graph import stable_toposort, tag
from dmt_fx.ir.names import (
    RUNTIME_ATTR,
    Role,
    exchange_group,
    host_exchange_path,
    nodes_with_role,
    sequence_table_path,
)
from dmt_fx.ir.sites import SEQUENCE_KIND, EmbeddingSite
from dmt_fx.runtime.exchange import HostSlice
from dmt_fx.runtime.groups import runtime_device
from dmt_fx.runtime.optim import DENSE, FUSED, copy_into_shards
from dmt_fx.runtime.padded import TrimmedState, pad_weights
from dmt_fx.runtime.padding_idx import drop_padding
from dmt_fx.runtime.plain import PlainLookup, plain_lookups, pooled_output, received_output, table_attr
from dmt_fx.runtime.sequence import (
    HostSequenceExchange,
    SequenceLookup,
    SequenceOutput,
    meta_collection,
    pad_sequence_collection,
    sequence_dims,
)
from dmt_fx.runtime.shardings import host_sharding_plan

PASS = "distribute"


@dataclasses.dataclass
class SequenceParts:
    """Step 1: the model's sequence collections."""

    sites: list[EmbeddingSite]
    plain: list[list[PlainLookup]]  # plain sequence lookups, one group per width
    exchanges: list[fx.Node]  # their tower input exchanges

    def __bool__(self) -> bool:
        return bool(self.sites or self.plain)


def sequence_parts(lowering: Any) -> SequenceParts:
    result = lowering.result
    sites = [s for s in result.sites.sites if s.kind == SEQUENCE_KIND]
    lookups = plain_lookups(lowering.physical, result, sequence=True)
    by_width: dict[int, list[PlainLookup]] = {}
    for lk in lookups:
        by_width.setdefault(lk.dim, []).append(lk)
    exchanges = [n for s in sites for n in lowering.input_exchanges(s)] + [lk.exchange for lk in lookups]
    parts = SequenceParts(sites, list(by_width.values()), exchanges)
    if parts and lowering.fused_params is None:  # on every rank, before any table is sharded
        modules = sorted({s.module for s in sites} | {lk.table for lk in lookups})
        raise DMTError(f"sequence tables of {modules} on TorchRec's DENSE kernel (the optimizer FBGEMM "
                       "cannot fuse here, e.g. Adam on the CPU)",
                       "a fused optimizer for sequence tables: TorchRec's DENSE sequence lookup on the CPU "
                       "returns rows that do not match its lengths (construct_jagged_tensors fails)",
                       ["train with torch.optim.SGD or torch.optim.Adagrad (fused on the CPU)"])
    return parts


def check_sequences(gm: fx.GraphModule, result: Any) -> None:
    """What `distribute` refuses of the sequence lookups (max_norm, scale_grad_by_freq: the
    plain lookups' own checks); no process group needed (the CLI runs it before torchrun,
    through `check_distributable`)."""
    plain_lookups(gm, result, sequence=True)
    for site in result.sites.sites:  # an EmbeddingCollection key read by two tables of one host
        if site.kind != SEQUENCE_KIND:
            continue
        per_host: list[list[nn.Module]] = [[] for _ in range(result.topology.num_hosts)]
        for tower in result.plan.towers:
            path = result.tower_modules(tower.index).collections.get(site.module)
            if path is not None:
                per_host[tower.host].append(gm.get_submodule(path))
        for ecs in per_host:
            if ecs and all(hasattr(ec, "embedding_names_by_table") for ec in ecs):
                ec_slice(ecs, site.module)


# ---------------------------------------------------------------- step 2


def shard_sequences(lowering: Any, index: int, ec: nn.Module, weights: dict[str, Any]) -> nn.Module:
    """`ec` (an EmbeddingCollection) sharded over the host's ranks, starting from `weights`."""
    sharder = EmbeddingCollectionSharder(fused_params=lowering.fused_params)
    dims, padded = sequence_dims(ec), pad_sequence_collection(ec)
    kernel = DENSE if lowering.fused_params is None else FUSED  # DENSE: the dense optimizer steps them
    plan = host_sharding_plan(padded, lowering.sharding, lowering.result.topology, lowering.me.host, sharder, kernel)
    lookup = sharder.shard(padded, plan, lowering.env, runtime_device())
    copy_into_shards(lookup.state_dict(), pad_weights(weights, dims))
    trim = TrimmedState(lookup, dims)
    if trim:
        lowering.trims.append(trim)
    if lowering.fused_params is not None:
        lowering.fused.append((f"sequence_{index}", lookup.fused_optimizer))
    return lookup


def ec_slice(ecs: Sequence[Any], module: str = "") -> HostSlice:
    keys = tuple(k for ec in ecs for c in ec.embedding_configs() for k in c.feature_names)
    names = tuple(n for ec in ecs for names in ec.embedding_names_by_table() for n in names)
    widths = tuple(c.embedding_dim for ec in ecs for c in ec.embedding_configs() for _ in c.feature_names)
    if keys != names:  # a key read by two tables of one collection is named `key@table`
        shared = sorted({k for k in keys if keys.count(k) > 1})
        raise DMTError(f"EmbeddingCollection {module!r} reads KJT key(s) {shared} with two or more tables "
                       f"(outputs {list(names)})",
                       "each KJT key read by one table of an EmbeddingCollection: the sequence exchange "
                       "returns one jagged tensor per key",
                       [f"give each table of {module!r} its own feature names, sending the ids under each "
                        "name (one table per key)"])
    return HostSlice(keys, names, widths)


def site_lookup(lowering: Any, index: int, site: EmbeddingSite) -> SequenceLookup:
    """This host's tables of the EmbeddingCollection `site`, sharded over the host's ranks."""
    per_host = lowering.tower_collections(site)
    slices = [ec_slice(ecs, site.module) for ecs in per_host]
    mine, lookup = per_host[lowering.me.host], None
    if mine:
        host_ec = sub_sequence_collection(mine)
        lookup = shard_sequences(lowering, index, host_ec, host_ec.state_dict())
        lowering.sharded[id(lookup)] = (lookup, {f"embeddings.{n}": sequence_table_path(site.module, n)
                                                 for n in host_ec.embeddings})
    return SequenceLookup(slices, lookup, lowering.me)


def plain_lookup(lowering: Any, index: int, group: list[PlainLookup]) -> SequenceLookup:
    """Plain sequence lookups of one width: this host's tables in one EmbeddingCollection."""
    per_host = [[lk for lk in group if lk.host == h] for h in range(lowering.result.topology.num_hosts)]
    slices = [HostSlice(tuple(lk.feature for lk in mine), tuple(lk.feature for lk in mine),
                        tuple(lk.dim for lk in mine)) for mine in per_host]
    mine, lookup = per_host[lowering.me.host], None
    if mine:
        by_table: dict[str, list[PlainLookup]] = {}
        for lk in mine:  # a table called for several fields: one table, one feature per call
            by_table.setdefault(lk.table, []).append(lk)
        configs = [EmbeddingConfig(num_embeddings=lks[0].num_embeddings, embedding_dim=lks[0].dim,
                                   name=table_attr(t), feature_names=[lk.feature for lk in lks])
                   for t, lks in by_table.items()]
        weights = {f"embeddings.{table_attr(lk.table)}.weight":
                   lowering.gm.get_parameter(lk.param).detach() for lk in mine}
        lookup = shard_sequences(lowering, index, meta_collection(configs), weights)
        lowering.sharded[id(lookup)] = (lookup, {f"embeddings.{table_attr(lk.table)}.weight": lk.param for lk in mine})
    return SequenceLookup(slices, lookup, lowering.me)


class PlainSequenceKJT(nn.Module):
    """The local [B, ...] id tensors of plain sequence lookups -> one KJT, a sequence per
    sample; ids equal to a table's padding_idx are dropped (`sequence_rows` puts zero rows
    in their places: nn.Embedding's padding row is zero and gets no gradient)."""

    def __init__(self, lookups: Sequence[PlainLookup]) -> None:
        super().__init__()
        self.keys = [lk.feature for lk in lookups]
        self.padding = [lk.padding_idx for lk in lookups]

    def forward(self, *ids: torch.Tensor) -> KeyedJaggedTensor:
        batch = ids[0].shape[0]
        values, lengths = [], []
        for x, padding in zip(ids, self.padding):
            v = x.reshape(-1).long()
            n = torch.full((batch,), x[0].numel() if batch else 0, dtype=torch.long, device=x.device)
            if padding is not None:
                v, n, _ = drop_padding(v, n, None, padding)
            values.append(v)
            lengths.append(n)
        return KeyedJaggedTensor(keys=self.keys, values=torch.cat(values), lengths=torch.cat(lengths), stride=batch)


def sequence_rows(rows: dict[str, JaggedTensor], key: str, ids: torch.Tensor, padding: int | None = None,
                  ) -> torch.Tensor:
    """A plain sequence lookup's rows in the shape nn.Embedding returns: ids.shape + (D,);
    zero rows where the ids are the padding index (dropped before the lookup)."""
    values = rows[key].values()
    if padding is not None:
        full = values.new_zeros(ids.numel(), values.shape[1])
        values = full.index_put((torch.nonzero(ids.reshape(-1) != padding).squeeze(1),), values)
    return values.view(*ids.shape, values.shape[1])


# ---------------------------------------------------------------- step 3


def lower_with_sequences(lowering: Any, parts: SequenceParts, sites: list[EmbeddingSite], lookups: list,
                         kjts: list[fx.Node], weighted: list[bool], id_group: str,
                         exchange: Any = HostSequenceExchange) -> None:
    """Steps 2-3 (the module docstring) for identity tower modules; `exchange` builds the
    host exchange (sequence tower modules: `dmt_fx.runtime.sequence_towers`)."""
    graph, first_index = lowering.graph, len(lookups)
    seq_lookups = [site_lookup(lowering, first_index + i, s) for i, s in enumerate(parts.sites)]
    seq_lookups += [plain_lookup(lowering, first_index + len(parts.sites) + i, g) for i, g in enumerate(parts.plain)]
    seq_kjts = [next(nodes_with_role(graph, Role.SELECT_FEATURES, origin=s.node)).args[0] for s in parts.sites]
    seq_kjts += [plain_kjt(lowering, i, g) for i, g in enumerate(parts.plain)]
    merges = [_one(nodes_with_role(graph, Role.MERGE, origin=s.node)) for s in sites]
    pooled_received = [[received_output(graph, lk) for lk in group] for group in lowering.plain]
    seq_merges = [_one(nodes_with_role(graph, Role.MERGE, origin=s.node)) for s in parts.sites]
    seq_received = [[received_output(graph, lk) for lk in group] for group in parts.plain]
    received = _nodes([part.args[0] for m in merges + seq_merges for part in _nodes(m.args[0])] +
                      [n.args[0] for nodes in pooled_received + seq_received for n in nodes])
    out_group = _one_group(received)
    keys = [m.args[1] for m in merges] + [[lk.feature for lk in group] for group in lowering.plain]
    outputs = [SequenceOutput(tuple(_keys(m.args[1])), lowering.gm.get_submodule(_site_path(lowering, s)).need_indices())
               for m, s in zip(seq_merges, parts.sites)]
    outputs += [SequenceOutput(tuple(lk.feature for lk in group)) for group in parts.plain]
    path = host_exchange_path(0)
    host_exchange = exchange(lookups, weighted, keys, seq_lookups, outputs, lowering.groups.of(id_group),
                             lowering.groups.of(out_group), lowering.me)
    host_exchange.sequence_modules = sorted({s.module for s in parts.sites} | {lk.table for g in parts.plain for lk in g})
    lowering.physical.add_submodule(path, host_exchange)
    users = set(merges + seq_merges) | {n for nodes in pooled_received + seq_received for n in nodes}
    first = next(n for n in graph.nodes if n in users)
    with graph.inserting_before(first):
        exchange = tag(graph.call_module(path, tuple(kjts + seq_kjts)), PASS, Role.HOST_TOWER_EXCHANGE)
    pooled, first_seq = len(lookups), len(lookups) + len(parts.sites)
    for index, (site, merge) in enumerate(zip(sites, merges)):
        _replace(graph, merge, exchange, index, origin=site.node)
    for index, (site, merge) in enumerate(zip(parts.sites, seq_merges), start=pooled):
        _replace(graph, merge, exchange, index, origin=site.node)
    reads = [(len(sites) + j, g, nodes, False) for j, (g, nodes) in enumerate(zip(lowering.plain, pooled_received))]
    reads += [(first_seq + j, g, nodes, True) for j, (g, nodes) in enumerate(zip(parts.plain, seq_received))]
    for index, group, nodes, sequence in reads:
        with graph.inserting_before(nodes[0]):
            item = graph.call_function(operator.getitem, (exchange, index))
            for lk, node in zip(group, nodes):
                read = (sequence_rows, (item, lk.feature, lk.indices, lk.padding_idx)) if sequence else \
                    (pooled_output, (item, lk.feature, lk.form, lk.indices))
                node.replace_all_uses_with(graph.call_function(*read))
    stable_toposort(graph)
    lowering.plain.extend(parts.plain)  # `finish` drops the original plain tables from the rank module


def plain_kjt(lowering: Any, index: int, group: list[PlainLookup]) -> fx.Node:
    path = f"{RUNTIME_ATTR}.sequence_kjt_{index}"
    lowering.physical.add_submodule(path, PlainSequenceKJT(group))
    first = next(n for n in lowering.graph.nodes if n in {lk.exchange for lk in group})
    with lowering.graph.inserting_before(first):
        return tag(lowering.graph.call_module(path, tuple(lk.indices for lk in group)), PASS, Role.SELECT_FEATURES)


def _site_path(lowering: Any, site: EmbeddingSite) -> str:
    """A tower collection of `site` (the original module is gone from the rewritten model)."""
    tower = next(t for t in lowering.result.towers if site.module in t.collections)
    return tower.collections[site.module]


def _replace(graph: fx.Graph, merge: fx.Node, exchange: fx.Node, index: int, origin: str) -> None:
    with graph.inserting_before(merge):
        item = tag(graph.call_function(operator.getitem, (exchange, index)), PASS, Role.MERGE, origin=origin)
    merge.replace_all_uses_with(item)


def _one_group(exchanges: Sequence[fx.Node]) -> str:
    """The one group kind of the exchanges the runtime fuses (as lowering.one_group)."""
    kinds = sorted({exchange_group(n) for n in exchanges})
    if len(kinds) != 1:
        raise DMTError(f"embedding exchanges on group kinds {kinds}", "one group kind for every exchange back",
                       ["transform the model again; edited graphs must keep the pass's group= arguments"])
    return kinds[0]


def _one(nodes: Any) -> fx.Node:
    found = list(nodes)
    assert len(found) == 1, f"expected one node, found {[n.name for n in found]}"
    return found[0]


def _nodes(arg: Any) -> list[fx.Node]:
    """A node argument that is a list of nodes (a merge node's parts), typed for mypy."""
    return list(arg)


def _keys(arg: Any) -> list[str]:
    """A merge node's keys argument, typed for mypy."""
    return list(arg)
