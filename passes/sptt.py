"""SPTT rewrite: split the embedding lookups into towers with peer exchanges around them.

Algorithm:
  1. For each tower, gather the id inputs of its features: for a TorchRec collection a
     `select_features` node (the tower's keys of the KJT), for a plain lookup its tensor
     inputs (indices, offsets, per-sample weights), for a field of a joint table its id
     column minus the field's row offset.
  2. One `peer_input_exchange` per tower over all those inputs (cross-host group).
  3. Tower lookups on the exchanged ids (intra-host): a tower EmbeddingBagCollection that
     holds the *original* table modules (no copies), or a copy of the plain lookup node, or
     per field of a joint table `aten.embedding` on the field's rows of the original weight
     (a `narrow` view: the same parameter, one checkpoint key).
  4. One `peer_output_exchange` per tower over the tower's lookup outputs.
  5. Rewire the users: a plain lookup's users read the exchanged output; a collection's
     users read `merge_keyed_tensors` of its towers' parts, in the original key order (an
     unpooled EmbeddingCollection's: `merge_jagged_dicts`, its per-feature JaggedTensors); a
     joint table's users read its fields' outputs stacked in field order.
  6. Erase the original lookups and restore a topological order.
Preserves numerics: in one process both exchanges are the identity, lookups read the same
tables with the same ids, and merging only slices and concatenates (a joint field reads row
o + i of the weight as row i of its view: the same row; its gradient lands on the same row).
"""

from __future__ import annotations

import logging
import operator

import torch
import torch.fx as fx

from dmt_fx._compat import ebc_embedding_names
from dmt_fx.compiler.joint import ids_of
from dmt_fx.ir import ops
from dmt_fx.ir.collections import sub_collection, sub_sequence_collection
from dmt_fx.ir.graph import stable_toposort, tag
from dmt_fx.ir.names import GroupKind, Role, sequence_table_path, table_name, table_path, tower_collection_path
from dmt_fx.ir.plan import Tower, TowerPlan
from dmt_fx.ir.sites import SEQUENCE_KIND, TORCHREC_KINDS, EmbeddingSite, ModelSites

log = logging.getLogger(__name__)
PASS = "sptt"
SELECT_FIELD = "select_field"  # role of a joint field's local ids (its column minus its row offset)
FIELD_ROWS = Role.FIELD_ROWS


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
            if site.kind in TORCHREC_KINDS:
                keys = tuple(self.sites.feature(f).key for f in features)
                kjt = node.args[0] if node.args else node.kwargs["features"]
                ids = [self._call(ops.select_features, (kjt, keys), Role.SELECT_FEATURES, tower)]
                ids[0].meta["dmt"]["origin"] = site.node
            elif self.is_joint(site):
                ids = [self.field_ids(node, self.sites.feature(f).field, f, tower) for f in features]
            else:
                ids = _id_inputs(node)
            slots.append((len(inputs), len(ids)))
            inputs += ids
        # Step 2
        exchange = self._call(ops.peer_input_exchange, (tuple(inputs),), Role.PEER_INPUT_EXCHANGE, tower,
                              self._collective_kwargs(tower))
        received = [self._call(operator.getitem, (exchange, i), Role.RECEIVED_IDS, tower) for i in range(len(inputs))]
        # Step 3
        lookups = [(site, out) for (site, features), (s, n) in zip(entries, slots)
                   for out in self.lookups(site, features, received[s:s + n], tower)]
        # Step 4
        back = self._call(ops.peer_output_exchange, (tuple(out for _, out in lookups),), Role.PEER_OUTPUT_EXCHANGE,
                          tower, self._collective_kwargs(tower))
        for i, (site, out) in enumerate(lookups):
            part = self._call(operator.getitem, (back, i), Role.RECEIVED_EMBEDDINGS, tower)
            self.parts[site.node].append(part)
            if self.is_joint(site):
                part.meta["dmt"]["features"] = out.meta["dmt"]["features"]

    def is_joint(self, site: EmbeddingSite) -> bool:
        return self.sites.feature(site.features[0]).field >= 0

    def field_ids(self, node: fx.Node, field: int, feature: str, tower: Tower) -> fx.Node:
        """Step 1 for a joint field: its ids column minus its row offset (local row ids)."""
        ids = ids_of(node)
        offset = self.sites.table(self.sites.feature(feature).table).row_offset
        column = self._call(torch.select, (ids, -1, field), SELECT_FIELD, tower)
        local = self._call(operator.sub, (column, offset), SELECT_FIELD, tower)
        for n in (column, local):
            n.meta["dmt"].update(origin=node.name, features=(feature,))
        return local

    def lookups(self, site: EmbeddingSite, features: list[str], ids: list[fx.Node], tower: Tower) -> list[fx.Node]:
        """Step 3: the tower's lookups of one site (one per field of a joint table)."""
        if not self.is_joint(site):
            return [self.lookup(site, features, ids, tower)]
        return [self.field_lookup(site, f, i, tower) for f, i in zip(features, ids)]

    def field_lookup(self, site: EmbeddingSite, feature: str, ids: fx.Node, tower: Tower) -> fx.Node:
        """One field of a joint table: aten.embedding on a view of the field's rows."""
        table = self.sites.table(self.sites.feature(feature).table)
        weight = tag(self.graph.get_attr(table.param), PASS, FIELD_ROWS, tower=tower.index, host=tower.host)
        if self.sparse_gradient(site):
            # narrow has no sparse backward: the field's ids look up the whole table again (its
            # rows start at the offset), so the weight's gradient is sparse as in the original
            rows = self._call(operator.add, (ids, table.row_offset), FIELD_ROWS, tower)
            new = self.graph.call_function(torch.ops.aten.embedding.default, (weight, rows, -1, False, True))
        else:
            rows = self._call(torch.narrow, (weight, 0, table.row_offset, table.num_embeddings), FIELD_ROWS, tower)
            new = self.graph.call_function(torch.ops.aten.embedding.default, (rows, ids))
        return tag(new, PASS, Role.TOWER_LOOKUP, tower=tower.index, host=tower.host, origin=site.node,
                   features=(feature,))

    def sparse_gradient(self, site: EmbeddingSite) -> bool:
        """Whether the original lookup gives its weight a sparse gradient (sparse=True)."""
        node = self.nodes[site.node]
        if node.op == "call_module":
            return bool(getattr(self.gm.get_submodule(str(node.target)), "sparse", False))
        return len(node.args) > 4 and bool(node.args[4]) or bool(node.kwargs.get("sparse", False))

    def lookup(self, site: EmbeddingSite, features: list[str], ids: list[fx.Node], tower: Tower) -> fx.Node:
        node = self.nodes[site.node]
        if site.kind == SEQUENCE_KIND:
            new = self.graph.call_module(self.sequence_collection(site, features, tower), (ids[0],))
        elif site.kind == "torchrec_ebc":
            ebc = self.gm.get_submodule(site.module)
            tables = {table_name(site.module, self.sites.feature(f).table) for f in features}
            path = tower_collection_path(tower.index, site.module)
            self.gm.add_submodule(path, ops.pool_in_process(sub_collection([ebc], tables)))
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

    def sequence_collection(self, site: EmbeddingSite, features: list[str], tower: Tower) -> str:
        """The tower's EmbeddingCollection over its tables of `site` (the original modules)."""
        tables = {table_name(site.module, self.sites.feature(f).table) for f in features}
        path = tower_collection_path(tower.index, site.module)
        self.gm.add_submodule(path, sub_sequence_collection([self.gm.get_submodule(site.module)], tables))
        for name in self.gm.get_submodule(path).embeddings:
            self.renames[sequence_table_path(path, name)] = sequence_table_path(site.module, name)
        return path

    def rewire(self, site: EmbeddingSite) -> None:
        """Step 5."""
        parts = self.parts[site.node]
        if site.kind == SEQUENCE_KIND:  # the per-feature JaggedTensors, in the collection's key order
            ec = self.gm.get_submodule(site.module)
            keys = tuple(n for names in ec.embedding_names_by_table() for n in names)
            merged = tag(self.graph.call_function(ops.merge_jagged_dicts, (tuple(parts), keys)), PASS, Role.MERGE,
                         origin=site.node)
            self.nodes[site.node].replace_all_uses_with(merged)
        elif site.kind == "torchrec_ebc":
            keys = tuple(ebc_embedding_names(self.gm.get_submodule(site.module)))
            merged = self.graph.call_function(ops.merge_keyed_tensors, (tuple(parts), keys))
            tag(merged, PASS, Role.MERGE, origin=site.node)
            self.nodes[site.node].replace_all_uses_with(merged)
        elif self.is_joint(site):  # the fields' [..., D] outputs back as the [..., F, D] the lookup returned
            field = {f: self.sites.feature(f).field for f in site.features}
            ordered = sorted(parts, key=lambda p: field[p.meta["dmt"]["features"][0]])
            merged = tag(self.graph.call_function(torch.stack, (tuple(ordered), -2)), PASS, Role.MERGE,
                         origin=site.node)
            self.nodes[site.output].replace_all_uses_with(merged)
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
    for module in {s.module for s in sites.sites if s.kind in TORCHREC_KINDS}:
        gm.delete_submodule(module)
    gm.meta.setdefault("dmt_renames", {}).update(rewriter.renames)
    log.info("sptt: rewrote %d embedding lookups (%d features) into %d towers",
             len(sites.sites), len(sites.features), len(plan.towers))
    return gm
