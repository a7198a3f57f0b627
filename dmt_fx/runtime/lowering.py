"""The per-rank lowering: the logical DMT graph -> this rank's module.

Algorithm (on rank (h, l), from the typed `DMTResult`, never from module-path strings):
  1. copy the graph and the module (the logical model keeps its own graph);
  2. per embedding site, this host's tables: the tower collections of the towers the plan
     puts on host h (`DMTResult.towers` says where they are), merged into one collection
     and sharded over the host's ranks by TorchRec with the chosen intra-host sharding;
  3. identity tower modules: each site's tower blocks (select, exchanges, lookups, merge)
     become one `HostTowerExchange`; compressing tower modules: all tower blocks become one
     `HostTowerBlock` that runs host h's tower module, and each tower output reads its slice;
     every exchange runs on the process group its graph node names (`group=`);
  4. drop the logical tower modules, and rename the state-dict keys back to the original's.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
from typing import Any, Iterable

import torch.fx as fx
import torch.nn as nn
from torch.fx.graph_module import _copy_attr
from torch.nn.parallel import DistributedDataParallel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.types import ShardingEnv
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import KeyedOptimizer

from dmt_fx.ir import ops
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
from dmt_fx.runtime.exchange import HostLookup, HostSlice, HostTowerBlock, HostTowerExchange
from dmt_fx.runtime.groups import ProcessGroups, RankInfo, ddp_device_ids, runtime_device
from dmt_fx.runtime.optim import copy_into_shards
from dmt_fx.runtime.shardings import host_sharding_plan

PASS = "distribute"


@dataclasses.dataclass
class Lowered:
    """This rank's module, its sharded lookups and their fused optimizers."""

    module: fx.GraphModule
    lookups: list[nn.Module]
    fused: list[tuple[str, KeyedOptimizer]]


def lower(gm: fx.GraphModule, result: DMTResult, me: RankInfo, groups: ProcessGroups, *, sharding: str,
          fused_params: dict[str, Any]) -> Lowered:
    """Steps 1-4 of the module docstring."""
    return _Lowering(gm, result, me, groups, sharding, fused_params).run()


class _Lowering:
    def __init__(self, gm: fx.GraphModule, result: DMTResult, me: RankInfo, groups: ProcessGroups,
                 sharding: str, fused_params: dict[str, Any]) -> None:
        self.gm, self.result, self.me, self.groups = gm, result, me, groups
        self.sharding, self.fused_params = sharding, fused_params
        # Step 1
        self.physical = fx.GraphModule(gm, copy_graph(gm), class_name="DMTRankModule")
        copy_missing_state(gm, self.physical)
        self.graph = self.physical.graph
        # id of a sharded lookup -> (the lookup, its site, the names of its tables)
        self.sharded: dict[int, tuple[nn.Module, EmbeddingSite, tuple[str, ...]]] = {}
        self.fused: list[tuple[str, KeyedOptimizer]] = []

    def run(self) -> Lowered:
        sites = self.result.sites.sites
        lookups = [self.host_lookup(index, site) for index, site in enumerate(sites)]  # Step 2
        if self.result.plan.changes_model:  # Step 3
            tower_module = self.lower_tower_block(lookups)
        else:
            tower_module = None
            for index, (site, lookup) in enumerate(zip(sites, lookups)):
                self.lower_exchange(index, site, lookup)
        return self.finish(tower_module)  # Step 4

    # ------------------------------------------------------------ step 2

    def host_lookup(self, index: int, site: EmbeddingSite) -> HostLookup:
        """This host's slice of collection `site`, sharded over the host's ranks by TorchRec."""
        per_host = self.tower_collections(site)
        slices = [host_slice(ebcs) for ebcs in per_host]
        mine, lookup = per_host[self.me.host], None
        if mine:
            host_ebc = sub_collection(mine)
            sharder = EmbeddingBagCollectionSharder(fused_params=self.fused_params)
            plan = host_sharding_plan(host_ebc, self.sharding, self.result.topology, self.me.host, sharder)
            # The sharder itself, as TorchRec's tower sharding does: DMP cannot be a submodule
            # (its state_dict re-prefixes every key of a shared destination).
            lookup = sharder.shard(host_ebc, plan, ShardingEnv.from_process_group(self.groups.of(GroupKind.INTRA_HOST)),
                                   runtime_device())
            copy_into_shards(lookup.state_dict(), host_ebc.state_dict())
            self.fused.append((f"collection_{index}", lookup.fused_optimizer))
            self.sharded[id(lookup)] = (lookup, site, tuple(host_ebc.embedding_bags))
        return HostLookup(slices, lookup, self.groups.of(self.input_group(site)), self.me)

    def tower_collections(self, site: EmbeddingSite) -> list[list[EmbeddingBagCollection]]:
        """Per host, the tower collections of `site` of the towers the plan puts there."""
        per_host: list[list[EmbeddingBagCollection]] = [[] for _ in range(self.result.topology.num_hosts)]
        for tower in self.result.plan.towers:
            path = self.result.tower_modules(tower.index).collections.get(site.module)
            if path is not None:  # else the tower reads no feature of this collection
                per_host[tower.host].append(self.gm.get_submodule(path))
        return per_host

    def input_group(self, site: EmbeddingSite) -> str:
        selects = nodes_with_role(self.graph, Role.SELECT_FEATURES, origin=site.node)
        return one_group(u for s in selects for u in s.users if role_of(u) == Role.PEER_INPUT_EXCHANGE)

    # ------------------------------------------------------------ step 3

    def lower_exchange(self, index: int, site: EmbeddingSite, lookup: HostLookup) -> None:
        """Replace the logical tower blocks of one collection by its physical exchange."""
        merge = _one(nodes_with_role(self.graph, Role.MERGE, origin=site.node))
        select = next(nodes_with_role(self.graph, Role.SELECT_FEATURES, origin=site.node))
        group = one_group(part.args[0] for part in merge.args[0])  # the received embeddings' exchanges
        path = host_exchange_path(index)
        self.physical.add_submodule(path, HostTowerExchange(lookup, self.groups.of(group)))
        with self.graph.inserting_before(merge):
            exchange = tag(self.graph.call_module(path, (select.args[0],)), PASS, Role.HOST_TOWER_EXCHANGE,
                           origin=site.node)
            merged = tag(self.graph.call_function(ops.merge_keyed_tensors, ((exchange,), merge.args[1])), PASS,
                         Role.MERGE, origin=site.node)
        merge.replace_all_uses_with(merged)

    def lower_tower_block(self, lookups: list[HostLookup]) -> nn.Module | None:
        """One HostTowerBlock for all collections; each tower output reads its host's slice.

        Returns the logical tower module this rank runs (None when its host has no tower)."""
        towers = [self.result.tower_modules(t.index) for t in self.result.plan.towers]
        hosts = [t.host for t in towers]
        if len(set(hosts)) != len(hosts):
            raise DMTError(f"towers on hosts {hosts}", "one tower per host for distributed tower modules",
                           ["use the default plan (one tower per host)"])
        modules = {t.host: self.gm.get_submodule(_tower_module_path(t.tower_module, t.tower)) for t in towers}
        widths = [modules[h].spec.out_width if h in modules else 0 for h in range(self.result.topology.num_hosts)]
        module = modules.get(self.me.host)
        runs = module
        if module is not None and any(p.requires_grad for p in module.parameters()):
            # Data-parallel inside the host: the host's ranks see different rows.
            runs = DistributedDataParallel(module, process_group=self.groups.of(GroupKind.INTRA_HOST),
                                           device_ids=ddp_device_ids())
        outputs = list(nodes_with_role(self.graph, Role.TOWER_OUTPUT))
        group = one_group(out.args[0] for out in outputs)  # each output is item 0 of its exchange
        self.physical.add_submodule(HOST_TOWER_BLOCK_PATH, HostTowerBlock(lookups, runs, widths, self.groups.of(group)))
        kjts = [next(nodes_with_role(self.graph, Role.SELECT_FEATURES, origin=site.node)).args[0]
                for site in self.result.sites.sites]
        with self.graph.inserting_before(outputs[0]):
            block = tag(self.graph.call_module(HOST_TOWER_BLOCK_PATH, tuple(kjts)), PASS, Role.HOST_TOWER_BLOCK)
        for out in outputs:
            host = self.result.tower_modules(out.args[0].kwargs["tower"]).host
            with self.graph.inserting_before(out):
                item = self.graph.call_function(operator.getitem, (block, host))
            item.meta["dmt"] = {**out.meta["dmt"], "pass": PASS}
            out.replace_all_uses_with(item)
        stable_toposort(self.graph)
        return module

    # ------------------------------------------------------------ step 4

    def finish(self, tower_module: nn.Module | None) -> Lowered:
        self.graph.eliminate_dead_code()
        for attr in LOGICAL_ATTRS:
            if hasattr(self.physical, attr):
                delattr(self.physical, attr)
        self.physical.recompile()
        install_state_dict_hooks(self.physical, self.renames(tower_module), list(self.gm.state_dict().keys()))
        return Lowered(self.physical, [entry[0] for entry in self.sharded.values()], self.fused)

    def renames(self, tower_module: nn.Module | None) -> dict[str, str]:
        """Physical module paths -> the original model's, found by identity, not built as strings."""
        renames = {}
        logical = {id(m): path for path, m in self.gm.named_modules()}
        for path, module in self.physical.named_modules():
            if id(module) in self.sharded:
                _, site, tables = self.sharded[id(module)]
                for name in tables:
                    renames[table_path(path, name)] = table_path(site.module, name)
            elif module is tower_module and path.startswith(RUNTIME_ATTR + "."):
                renames[path] = logical[id(module)]
        return renames


# ---------------------------------------------------------------- helpers


def host_slice(ebcs: list[EmbeddingBagCollection]) -> HostSlice:
    """What the tower collections `ebcs` of one host hold: keys in, names and widths out."""
    keys = tuple(k for ebc in ebcs for c in ebc.embedding_bag_configs() for k in c.feature_names)
    names = tuple(n for ebc in ebcs for n in ebc._embedding_names)
    widths = tuple(w for ebc in ebcs for w in ebc._lengths_per_embedding)
    return HostSlice(keys, names, widths)


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
            _copy_attr(gm, physical, name)


def copy_graph(gm: fx.GraphModule) -> fx.Graph:
    """A copy of the graph whose nodes keep their meta (roles, origins)."""
    graph = fx.Graph()
    output = graph.graph_copy(gm.graph, {})
    graph.output(output)
    graph._codegen = gm.graph._codegen
    for old, new in zip(gm.graph.nodes, graph.nodes):
        new.meta = dict(old.meta)
    return graph
