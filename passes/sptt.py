"""SPTT rewrite: split the embedding lookups into towers with peer exchanges around them.

Algorithm:
  1. For each tower, gather the id inputs of its features: for a TorchRec collection a
     `select_features` node (the tower's keys of the KJT), for a plain lookup its tensor
     inputs (indices, offsets, per-sample weights).
  2. One `peer_input_exchange` per tower over all those inputs (cross-host group).
  3. Tower lookups on the exchanged ids (intra-host): a tower EmbeddingBagCollection that
     holds the *original* table modules (no copies), or a copy of the plain lookup node.
  4. One `peer_output_exchange` per tower over the tower's lookup outputs.
  5. Rewire the users: a plain lookup's users read the exchanged output; a collection's
     users read `merge_keyed_tensors` of its towers' parts, in the original key order.
  6. Erase the original lookups and restore a topological order.
Preserves numerics: in one process both exchanges are the identity, lookups read the same
tables with the same ids, and merging only slices and concatenates.
"""

from __future__ import annotations

import logging
import operator

import torch.fx as fx

from dmt_fx.ir import ops
from dmt_fx.ir.collections import sub_collection
from dmt_fx.ir.graph import stable_toposort, tag
from dmt_fx.ir.names import GroupKind, Role, table_name, table_path, tower_collection_path
from dmt_fx.ir.plan import Tower, TowerPlan
from dmt_fx.ir.sites import EmbeddingSite, ModelSites

log = logging.getLogger(__name__)
PASS = "sptt"


def _id_inputs(node: fx.Node) -> list[fx.Node]:
    """The tensors a plain lookup reads besides its weight."""
    return [n for n in node.all_input_nodes if n.op != "get_attr"]


class _Rewriter:
    def __init__(self, gm: fx.GraphModule, sites: ModelSites, plan: TowerPlan) -> None:
        self.gm, self.graph, self.sites, self.plan = gm, gm.graph, sites, plan
        self.nodes = {n.name: n for n in gm.graph.nodes}
        self.tower_of = plan.tower_of()
        self.parts: dict[str, list[fx.Node]] = {s.node: [] for s in sites.sites}
        self.renames: dict[str, str] = {}  # new module path -> original module path

    def _call(self, target, args, role: str, tower: Tower, kwargs: dict | None = None) -> fx.Node:
        node = self.graph.call_function(target, args, kwargs or {})
        return tag(node, PASS, role, tower=tower.index, host=tower.host)

    @staticmethod
    def _collective_kwargs(tower: Tower) -> dict:
        return {"tower": tower.index, "host": tower.host, "group": GroupKind.PEER}

    def entries(self, tower: Tower) -> list[tuple[EmbeddingSite, list[str]]]:
        out = []
        for site in self.sites.sites:
            mine = [f for f in site.features if self.tower_of[f] == tower.index]
            if mine:
                out.append((site, mine))
        return out

    def rewrite_tower(self, tower: Tower) -> None:
        entries = self.entries(tower)
        # Step 1
        inputs, slots = [], []
        for site, features in entries:
            node = self.nodes[site.node]
            if site.kind == "torchrec_ebc":
                keys = tuple(self.sites.feature(f).key for f in features)
                kjt = node.args[0] if node.args else node.kwargs["features"]
                ids = [self._call(ops.select_features, (kjt, keys), Role.SELECT_FEATURES, tower)]
                ids[0].meta["dmt"]["origin"] = site.node
            else:
                ids = _id_inputs(node)
            slots.append((len(inputs), len(ids)))
            inputs += ids
        # Step 2
        exchange = self._call(ops.peer_input_exchange, (tuple(inputs),), Role.PEER_INPUT_EXCHANGE, tower,
                              self._collective_kwargs(tower))
        received = [self._call(operator.getitem, (exchange, i), Role.RECEIVED_IDS, tower) for i in range(len(inputs))]
        # Step 3
        lookups = [self.lookup(site, features, received[s:s + n], tower)
                   for (site, features), (s, n) in zip(entries, slots)]
        # Step 4
        back = self._call(ops.peer_output_exchange, (tuple(lookups),), Role.PEER_OUTPUT_EXCHANGE, tower,
                          self._collective_kwargs(tower))
        for i, (site, _) in enumerate(entries):
            self.parts[site.node].append(self._call(operator.getitem, (back, i), Role.RECEIVED_EMBEDDINGS, tower))

    def lookup(self, site: EmbeddingSite, features: list[str], ids: list[fx.Node], tower: Tower) -> fx.Node:
        node = self.nodes[site.node]
        if site.kind == "torchrec_ebc":
            ebc = self.gm.get_submodule(site.module)
            tables = {table_name(site.module, self.sites.feature(f).table) for f in features}
            path = tower_collection_path(tower.index, site.module)
            self.gm.add_submodule(path, sub_collection([ebc], tables))
            for name in self.gm.get_submodule(path).embedding_bags:
                self.renames[table_path(path, name)] = table_path(site.module, name)
            new = self.graph.call_module(path, (ids[0],))
        else:
            remap = dict(zip(_id_inputs(node), ids))
            new = self.graph.node_copy(node, lambda n: remap.get(n, n))
            tag(new, PASS, Role.TOWER_LOOKUP, tower=tower.index, host=tower.host, origin=site.node,
                features=tuple(features))
            if site.output != site.node:  # export route: the pooled output is item 0
                output = self.graph.call_function(operator.getitem, (new, 0))
                return tag(output, PASS, Role.LOOKUP_OUTPUT, tower=tower.index, host=tower.host, origin=site.node)
            return new
        return tag(new, PASS, Role.TOWER_LOOKUP, tower=tower.index, host=tower.host, origin=site.node,
                   features=tuple(features))

    def rewire(self, site: EmbeddingSite) -> None:
        """Step 5."""
        parts = self.parts[site.node]
        if site.kind == "torchrec_ebc":
            keys = tuple(self.gm.get_submodule(site.module)._embedding_names)
            merged = self.graph.call_function(ops.merge_keyed_tensors, (tuple(parts), keys))
            tag(merged, PASS, Role.MERGE, origin=site.node)
            self.nodes[site.node].replace_all_uses_with(merged)
        else:
            self.nodes[site.output].replace_all_uses_with(parts[0])

    def erase(self, site: EmbeddingSite) -> None:
        """Step 6: the original lookup and its unused tuple items."""
        node = self.nodes[site.node]
        for user in list(node.users):
            assert not user.users, f"{user.name} still used after the rewrite"
            self.graph.erase_node(user)
        self.graph.erase_node(node)


def sptt_pass(gm: fx.GraphModule, *, sites: ModelSites, plan: TowerPlan) -> fx.GraphModule:
    rewriter = _Rewriter(gm, sites, plan)
    first = rewriter.nodes[sites.sites[0].node]
    with gm.graph.inserting_before(first):
        for tower in plan.towers:
            rewriter.rewrite_tower(tower)
        for site in sites.sites:
            rewriter.rewire(site)
    for site in sites.sites:
        rewriter.erase(site)
    stable_toposort(gm.graph)
    for module in {s.module for s in sites.sites if s.kind == "torchrec_ebc"}:
        gm.delete_submodule(module)
    gm.meta.setdefault("dmt_renames", {}).update(rewriter.renames)
    log.info("sptt: rewrote %d embedding lookups (%d features) into %d towers",
             len(sites.sites), len(sites.features), len(plan.towers))
    return gm
