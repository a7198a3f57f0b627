"""The per-rank lowering: the logical DMT graph -> this rank's module.

Algorithm (on rank (h, l), from the typed `DMTResult`, never from module-path strings):
  1. copy the graph and the module (the logical model keeps its own graph);
  2. per embedding site, this host's tables: the tower collections of the towers the plan
     puts on host h (`DMTResult.towers` says where they are), merged into one collection
     and sharded over the host's ranks by TorchRec with the chosen intra-host sharding;
  3. identity tower modules: the tower blocks of every site (select, exchanges, lookups,
     merge) become one `HostTowerExchange`: one peer id exchange and one pooled exchange back
     for all collections, each site's merge reading its KeyedTensor; compressing tower
     modules: all tower blocks become one `HostTowerBlock` that runs host h's tower module,
     and each tower output reads its slice; every exchange runs on the process group its
     graph nodes name (`group=`);
  4. drop the logical tower modules, and rename the state-dict keys back to the original's.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
from typing import Any, Iterable

import torch.fx as fx
import torch.nn as nn
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.types import ShardingEnv
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import KeyedOptimizer

from dmt_fx._compat import (
    copy_attr,
    copy_codegen,
    ebc_embedding_names,
    ebc_lengths_per_embedding,
    module_buffers,
    module_parameters,
    non_persistent_buffers,
)
from dmt_fx.ir.collections import sub_collection
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.graph import stable_toposort, tag
from dmt_fx.ir.names import (
    HOST_TOWER_BLOCK_PATH,
    LOGICAL_ATTRS,
    RUNTIME_ATTR,
    GroupKind,
    Role,
    exchange_group,
    host_exchange_path,
    nodes_with_role,
    role_of,
    table_path,
)
from dmt_fx.ir.result import DMTResult
from dmt_fx.ir.sites import EmbeddingSite
from dmt_fx.ir.state_dict import install_state_dict_hooks
from dmt_fx.runtime.exchange import HostLookup, HostSlice, HostTowerBlock, HostTowerExchange, HostTowers, tower_columns
from dmt_fx.runtime.groups import ProcessGroups, RankInfo, host_data_parallel, runtime_device
from dmt_fx.runtime.meta_init import ShardInit, fill_shards, plain_inits
from dmt_fx.runtime.optim import DENSE, FUSED
from dmt_fx.runtime.padded import TrimmedState, pad_collection, pad_weights, table_dims
from dmt_fx.runtime.plain import (
    PlainKJT,
    PlainLookup,
    host_collection,
    original_weights,
    plain_groups,
    plain_kjt_inputs,
    plain_kjt_path,
    plain_lookups,
    pooled_output,
    received_output,
    table_attr,
)
from dmt_fx.runtime.sequence_lowering import lower_with_sequences, sequence_parts
from dmt_fx.runtime.sequence_towers import lower_sequence_towers
from dmt_fx.runtime.shardings import host_sharding_plan

PASS = "distribute"


@dataclasses.dataclass
class Lowered:
    """This rank's module, its sharded lookups and their fused optimizers."""

    module: fx.GraphModule
    lookups: list[nn.Module]
    fused: list[tuple[str, KeyedOptimizer]]


def lower(gm: fx.GraphModule, result: DMTResult, me: RankInfo, groups: ProcessGroups, *, sharding: str,
          fused_params: dict[str, Any] | None) -> Lowered:
    """Steps 1-4 of the module docstring. `fused_params` None: the tables use TorchRec's
    DENSE kernel (no fused optimizer; the dense optimizer steps them: `table_kernel`)."""
    return _Lowering(gm, result, me, groups, sharding, fused_params).run()


class _Lowering:
    def __init__(self, gm: fx.GraphModule, result: DMTResult, me: RankInfo, groups: ProcessGroups,
                 sharding: str, fused_params: dict[str, Any] | None) -> None:
        self.gm, self.result, self.me, self.groups = gm, result, me, groups
        # The plan's sharding for this host (plan="auto" chooses one per tower), else `sharding`.
        self.sharding = result.plan.sharding_of_host(me.host, sharding)
        self.fused_params = fused_params
        # Step 1
        self.physical = fx.GraphModule(gm, copy_graph(gm), class_name="DMTRankModule")
        copy_missing_state(gm, self.physical)
        keep_constants_out_of_state(gm, self.physical)
        self.graph = self.physical.graph
        # id of a sharded lookup -> (the lookup, its table names -> the original tables' module paths)
        self.sharded: dict[int, tuple[nn.Module, dict[str, str]]] = {}
        self.fused: list[tuple[str, KeyedOptimizer]] = []
        self.trims: list[TrimmedState] = []  # lookups over padded tables (any width: padded.py)
        # One sharding environment, made on EVERY rank: TorchRec's ShardingEnv builds a device
        # mesh, whose `new_group` call counts on the default group. Made per sharded collection,
        # only the ranks of hosts with tables would count it, the ranks would then disagree on
        # the names of later groups, and the next model in this process group would hang.
        self.env = ShardingEnv.from_process_group(groups.of(GroupKind.INTRA_HOST))

    def run(self) -> Lowered:
        sites = [s for s in self.result.sites.sites if s.kind == "torchrec_ebc"]
        # Step 2: TorchRec collections, then the plain lookups as virtual collections
        lookups = [self.host_lookup(index, site) for index, site in enumerate(sites)]
        kjts = [next(nodes_with_role(self.graph, Role.SELECT_FEATURES, origin=s.node)).args[0] for s in sites]
        self.plain = plain_groups(plain_lookups(self.physical, self.result))
        for index, group in enumerate(self.plain, start=len(sites)):
            lookups.append(self.plain_host_lookup(index, group))
            kjts.append(self.plain_kjt(index, group))
        weighted = [self.site_weighted(s) for s in sites] + [group[0].weighted for group in self.plain]
        sequences = sequence_parts(self)  # unpooled lookups (runtime/sequence_lowering.py)
        id_group = one_group([n for s in sites for n in self.input_exchanges(s)] +
                             [lk.exchange for group in self.plain for lk in group] + sequences.exchanges)
        if self.result.plan.changes_model and sequences:  # sequence tower modules (runtime/sequence_towers.py)
            tower_modules = lower_sequence_towers(self, sequences, sites, lookups, kjts, weighted, id_group)
        elif self.result.plan.changes_model:  # Step 3
            tower_modules = self.lower_tower_block(lookups, kjts, weighted, id_group)
        elif sequences:
            tower_modules = []
            lower_with_sequences(self, sequences, sites, lookups, kjts, weighted, id_group)
        else:
            tower_modules = []
            self.lower_exchange(sites, lookups, kjts, weighted, id_group)
        return self.finish(tower_modules)  # Step 4

    # ------------------------------------------------------------ step 2

    def host_lookup(self, index: int, site: EmbeddingSite) -> HostLookup:
        """This host's slice of collection `site`, sharded over the host's ranks by TorchRec."""
        per_host = self.tower_collections(site)
        slices = [host_slice(ebcs) for ebcs in per_host]
        mine, lookup = per_host[self.me.host], None
        if mine:
            host_ebc = sub_collection(mine)
            lookup = self.shard(index, host_ebc, host_ebc.state_dict())
            self.sharded[id(lookup)] = (lookup, {n: table_path(site.module, n) for n in host_ebc.embedding_bags})
        return HostLookup(slices, lookup, self.me)

    def shard(self, index: int, host_ebc: EmbeddingBagCollection, weights: dict[str, Any],
              inits: dict[str, ShardInit] | None = None) -> nn.Module:
        """`host_ebc` sharded over the host's ranks from `weights` (state-dict keys; meta ones: meta_init.py)."""
        sharder = EmbeddingBagCollectionSharder(fused_params=self.fused_params)
        dims, padded = table_dims(host_ebc), pad_collection(host_ebc)  # widths FBGEMM takes
        kernel = DENSE if self.fused_params is None else FUSED
        plan = host_sharding_plan(padded, self.sharding, self.result.topology, self.me.host, sharder, kernel)
        # The sharder itself, as TorchRec's tower sharding does: DMP cannot be a submodule
        # (its state_dict re-prefixes every key of a shared destination).
        lookup = sharder.shard(padded, plan, self.env, runtime_device())
        fill_shards(lookup.state_dict(), pad_weights(weights, dims), dims, inits)
        trim = TrimmedState(lookup, dims)
        if trim:
            self.trims.append(trim)
        if self.fused_params is not None:
            self.fused.append((f"collection_{index}", lookup.fused_optimizer))
        return lookup

    def plain_host_lookup(self, index: int, group: list[PlainLookup]) -> HostLookup:
        """Plain lookups: this host's tables in one TorchRec collection, sharded like the others."""
        per_host = [[lk for lk in group if lk.host == h] for h in range(self.result.topology.num_hosts)]
        slices = [HostSlice(tuple(lk.feature for lk in mine), tuple(lk.feature for lk in mine),
                            tuple(lk.dim for lk in mine)) for mine in per_host]
        mine, lookup = per_host[self.me.host], None
        if mine:
            lookup = self.shard(index, host_collection(mine), original_weights(self.gm, mine), plain_inits(self.gm, mine))
            # Whole keys: the original weight's name, which for a module with several tables is
            # not `<module>.weight`.
            self.sharded[id(lookup)] = (lookup, {f"{table_attr(lk.table)}.weight": lk.param for lk in mine})
        return HostLookup(slices, lookup, self.me)

    def plain_kjt(self, index: int, group: list[PlainLookup]) -> fx.Node:
        """The node that turns the lookups' local id tensors into one KJT, before any exchange."""
        path = plain_kjt_path(index)
        self.physical.add_submodule(path, PlainKJT(group))
        first = next(n for n in self.graph.nodes if n in {lk.exchange for lk in group})
        with self.graph.inserting_before(first):
            return tag(self.graph.call_module(path, tuple(plain_kjt_inputs(group))), PASS, Role.SELECT_FEATURES)

    def tower_collections(self, site: EmbeddingSite) -> list[list[EmbeddingBagCollection]]:
        """Per host, the tower collections of `site` of the towers the plan puts there."""
        per_host: list[list[EmbeddingBagCollection]] = [[] for _ in range(self.result.topology.num_hosts)]
        for tower in self.result.plan.towers:
            path = self.result.tower_modules(tower.index).collections.get(site.module)
            if path is not None:  # else the tower reads no feature of this collection
                per_host[tower.host].append(self.gm.get_submodule(path))
        return per_host

    def input_exchanges(self, site: EmbeddingSite) -> list[fx.Node]:
        selects = nodes_with_role(self.graph, Role.SELECT_FEATURES, origin=site.node)
        return [u for s in selects for u in s.users if role_of(u) == Role.PEER_INPUT_EXCHANGE]

    def site_weighted(self, site: EmbeddingSite) -> bool:
        return any(self.result.sites.feature(f).weighted for f in site.features)

    # ------------------------------------------------------------ step 3

    def lower_exchange(self, sites: list[EmbeddingSite], lookups: list[HostLookup], kjts: list[fx.Node],
                       weighted: list[bool], id_group: str) -> None:
        """Identity tower modules: every collection's logical tower blocks become one
        HostTowerExchange (one id exchange, one pooled exchange back); each site's merge reads
        its KeyedTensor, each plain lookup's users read its columns in the original shape."""
        merges = [_one(nodes_with_role(self.graph, Role.MERGE, origin=s.node)) for s in sites]
        received = [[received_output(self.graph, lk) for lk in group] for group in self.plain]
        # the received embeddings' exchanges
        out_group = one_group([part.args[0] for m in merges for part in m.args[0]] +
                              [node.args[0] for nodes in received for node in nodes])
        keys = [m.args[1] for m in merges] + [[lk.feature for lk in group] for group in self.plain]
        path = host_exchange_path(0)
        self.physical.add_submodule(path, HostTowerExchange(lookups, weighted, keys, self.groups.of(id_group),
                                                            self.groups.of(out_group), self.me))
        first = next(n for n in self.graph.nodes if n in set(merges) | {n for r in received for n in r})
        with self.graph.inserting_before(first):
            exchange = tag(self.graph.call_module(path, tuple(kjts)), PASS, Role.HOST_TOWER_EXCHANGE)
        for index, (site, merge) in enumerate(zip(sites, merges)):
            with self.graph.inserting_before(merge):
                item = tag(self.graph.call_function(operator.getitem, (exchange, index)), PASS, Role.MERGE,
                           origin=site.node)
            merge.replace_all_uses_with(item)
        for index, (group, nodes) in enumerate(zip(self.plain, received), start=len(sites)):
            with self.graph.inserting_before(nodes[0]):
                item = self.graph.call_function(operator.getitem, (exchange, index))
                for lk, node in zip(group, nodes):
                    node.replace_all_uses_with(self.graph.call_function(pooled_output, (item, lk.feature, lk.form,
                                                                                        lk.indices)))
        stable_toposort(self.graph)

    def lower_tower_block(self, lookups: list[HostLookup], kjts: list[fx.Node], weighted: list[bool],
                          id_group: str) -> list[nn.Module]:
        """One HostTowerBlock for all collections; each tower output reads its slice of its host's.

        Returns the logical tower modules this rank runs (none when its host has no tower)."""
        towers = [self.result.tower_modules(t.index) for t in self.result.plan.towers]
        if self.plain and len(lookups) > 1:
            raise DMTError(f"{len(lookups)} collections (plain lookups with and without per-sample weights, "
                           "or plain and TorchRec lookups)", "one collection per model for distributed tower modules",
                           ["use the identity tower module", "read every table with per-sample weights or none"])
        modules = {t.tower: self.gm.get_submodule(_tower_module_path(t.tower_module, t.tower)) for t in towers}
        on_host = [sorted(t.tower for t in towers if t.host == h) for h in range(self.result.topology.num_hosts)]
        slots = [(h, t) for h, mine in enumerate(on_host) for t in (mine or [None])]  # host-major output order
        widths = [sum(modules[t].spec.out_width for t in mine) for mine in on_host]
        mine = [modules[t] for t in on_host[self.me.host]]
        module = mine[0] if len(mine) == 1 else None
        if len(mine) > 1:  # k towers share this host: each module on its own features' columns
            module = HostTowers(mine, tower_columns(lookups, [m.spec.features for m in mine]))
        runs = module
        if module is not None and any(p.requires_grad for p in module.parameters()):
            # Data-parallel inside the host: the host's ranks see different rows.
            runs = host_data_parallel(module, self.groups.of(GroupKind.INTRA_HOST))
        outputs = list(nodes_with_role(self.graph, Role.TOWER_OUTPUT))
        group = one_group(out.args[0] for out in outputs)  # each output is item 0 of its exchange
        self.physical.add_submodule(HOST_TOWER_BLOCK_PATH, HostTowerBlock(
            lookups, weighted, runs, widths, self.groups.of(id_group), self.groups.of(group), self.me,
            [0 if t is None else modules[t].spec.out_width for _, t in slots]))
        with self.graph.inserting_before(outputs[0]):
            block = tag(self.graph.call_module(HOST_TOWER_BLOCK_PATH, tuple(kjts)), PASS, Role.HOST_TOWER_BLOCK)
        for out in outputs:
            tower = self.result.tower_modules(out.args[0].kwargs["tower"])
            with self.graph.inserting_before(out):
                item = self.graph.call_function(operator.getitem, (block, slots.index((tower.host, tower.tower))))
            item.meta["dmt"] = {**out.meta["dmt"], "pass": PASS}
            out.replace_all_uses_with(item)
        stable_toposort(self.graph)
        return mine

    # ------------------------------------------------------------ step 4

    def finish(self, tower_modules: list[nn.Module]) -> Lowered:
        self.graph.eliminate_dead_code()
        for lookup in self.plain_tables():
            drop_table(self.physical, lookup)
        for attr in LOGICAL_ATTRS:
            if hasattr(self.physical, attr):
                delattr(self.physical, attr)
        self.physical.recompile()
        install_state_dict_hooks(self.physical, self.renames(tower_modules), list(self.gm.state_dict().keys()))
        for trim in self.trims:  # after the renames: its load hook reads the rank's keys
            trim.install(self.physical)
        return Lowered(self.physical, [entry[0] for entry in self.sharded.values()], self.fused)

    def plain_tables(self) -> list[PlainLookup]:
        return [lk for group in self.plain for lk in group]

    def renames(self, tower_modules: list[nn.Module]) -> dict[str, str]:
        """Physical module paths -> the original model's, found by identity, not built as strings."""
        renames = {}
        logical = {id(m): path for path, m in self.gm.named_modules()}
        for path, module in self.physical.named_modules():
            if id(module) in self.sharded:
                for name, original in self.sharded[id(module)][1].items():  # an EmbeddingCollection's: embeddings.*
                    renames[f"{path}.{name}" if name.startswith("embeddings.") else table_path(path, name)] = original
            elif any(module is m for m in tower_modules) and path.startswith(RUNTIME_ATTR + "."):
                renames[path] = logical[id(module)]
        return renames


# ---------------------------------------------------------------- helpers


def host_slice(ebcs: list[EmbeddingBagCollection]) -> HostSlice:
    """What the tower collections `ebcs` of one host hold: keys in, names and widths out."""
    keys = tuple(k for ebc in ebcs for c in ebc.embedding_bag_configs() for k in c.feature_names)
    names = tuple(n for ebc in ebcs for n in ebc_embedding_names(ebc))
    widths = tuple(w for ebc in ebcs for w in ebc_lengths_per_embedding(ebc))
    return HostSlice(keys, names, widths)


def drop_table(physical: fx.GraphModule, lookup: PlainLookup) -> None:
    """The original plain table left the rank's graph for a sharded collection: keep it out of
    DDP, the dense optimizer and the state dict."""
    owner_path, _, attr = lookup.param.rpartition(".")
    try:
        owner = physical.get_submodule(owner_path)
    except AttributeError:
        return
    if isinstance(owner, (nn.Embedding, nn.EmbeddingBag)):
        physical.delete_submodule(owner_path)
    elif hasattr(owner, attr):
        delattr(owner, attr)


def one_group(exchanges: Iterable[fx.Node]) -> str:
    """The group kind of a set of exchanges that the runtime fuses into one collective."""
    kinds = sorted({exchange_group(n) for n in exchanges})
    if len(kinds) != 1:
        raise DMTError(f"exchanges of one collection on group kinds {kinds}",
                       "one group kind per collection's input (and output) exchanges",
                       ["transform the model again; edited graphs must keep the pass's group= arguments"])
    return kinds[0]


def _one(nodes: Iterable[fx.Node]) -> fx.Node:
    found = list(nodes)
    assert len(found) == 1, f"expected one node, found {[n.name for n in found]}"
    return found[0]


def _tower_module_path(path: str | None, tower: int) -> str:
    if path is None:
        raise DMTError(f"tower {tower} without a tower module", "the tower_modules pass run by transform",
                       ["do not disable the tower_modules pass when tower_module changes the model"])
    return path


def copy_missing_state(gm: fx.GraphModule, physical: fx.GraphModule) -> None:
    """Parameters forward() never reads are not copied by GraphModule(); keep them."""
    def names(m: nn.Module) -> list[str]:
        return [n for n, _ in itertools.chain(m.named_parameters(remove_duplicate=False),
                                              m.named_buffers(remove_duplicate=False))]
    have = set(names(physical))
    logical = tuple(attr + "." for attr in LOGICAL_ATTRS)
    for name in names(gm):
        if name not in have and not name.startswith(logical):
            copy_attr(gm, physical, name)


def keep_constants_out_of_state(gm: fx.GraphModule, physical: fx.GraphModule) -> None:
    """Tensor constants of the graph (the export route's `lifted_tensor_N`: index lists built in
    forward) are plain attributes of the logical model, which GraphModule() turns into buffers:
    keep them out of the rank's state dict, as they are out of the original's."""
    for node in gm.graph.nodes:
        if node.op != "get_attr":
            continue
        owner, _, name = str(node.target).rpartition(".")
        logical, module = gm.get_submodule(owner), physical.get_submodule(owner)
        persistent = name in module_parameters(logical) or (
            name in module_buffers(logical) and name not in non_persistent_buffers(logical))
        if not persistent and name in module_buffers(module):
            non_persistent_buffers(module).add(name)


def copy_graph(gm: fx.GraphModule) -> fx.Graph:
    """A copy of the graph whose nodes keep their meta (roles, origins)."""
    graph = fx.Graph()
    output = graph.graph_copy(gm.graph, {})
    graph.output(output)
    copy_codegen(gm.graph, graph)
    for old, new in zip(gm.graph.nodes, graph.nodes):
        new.meta = dict(old.meta)
    return graph
