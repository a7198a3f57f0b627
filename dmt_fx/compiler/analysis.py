"""Read-only analyses of a captured graph: embedding sites and the interaction site.

Results are frozen dataclasses keyed by node *names* and module paths, never by Node
objects, so a plan built from them survives copies of the graph.
"""

from __future__ import annotations

import operator
from typing import Iterable

import torch
import torch.fx as fx
import torch.nn as nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from dmt_fx.compiler.interactions import match_interaction
from dmt_fx.ir.errors import NoEmbeddingError, NoInteractionError
from dmt_fx.ir.sites import EmbeddingSite, Feature, InteractionSite, ModelSites, Table

_POOLING = {0: "sum", 1: "mean", 2: "max"}
_EXPORT_BAG_OPS = {
    torch.ops.aten.embedding_bag.padding_idx,
    torch.ops.aten.embedding_bag.default,
    torch.ops.aten._embedding_bag.default,
}
_EXPORT_EMBEDDING_OPS = {torch.ops.aten.embedding.default}
Found = tuple[EmbeddingSite, list[Feature], list[Table]]  # one lookup's site, its features and tables


# ---------------------------------------------------------------- embedding sites


def _ebc_site(node: fx.Node, fqn: str, ebc: EmbeddingBagCollection, taken: set[str]) -> Found:
    features, tables = [], []
    weighted = ebc.is_weighted()
    for config in ebc.embedding_bag_configs():
        table_fqn = f"{fqn}.embedding_bags.{config.name}"
        weight = ebc.embedding_bags[config.name].weight
        tables.append(Table(table_fqn, f"{table_fqn}.weight", config.num_embeddings,
                            config.embedding_dim, weight.element_size()))
        for key in config.feature_names:
            # Feature names are KJT keys; a key reused by another collection is qualified.
            name = key if key not in taken else f"{fqn}:{key}"
            taken.add(name)
            features.append(Feature(name, table_fqn, config.embedding_dim,
                                    config.pooling.name.lower(), weighted, node.name, key))
    site = EmbeddingSite(node.name, "torchrec_ebc", fqn, tuple(f.name for f in features), node.name)
    return site, features, tables


def _plain_site(node: fx.Node, fqn: str, kind: str, weight: torch.Tensor, param: str,
                pooling: str, weighted: bool, output: fx.Node, taken: set[str], owners: dict[int, str]) -> Found:
    # One module may be called several times (a shared table): name the calls apart.
    name, k = fqn, 1
    while name in taken:
        name, k = f"{fqn}@{k}", k + 1
    taken.add(name)
    table_name = owners.setdefault(id(weight), fqn)  # tied weights share one table
    table = Table(table_name, param, weight.shape[0], weight.shape[1], weight.element_size())
    feature = Feature(name, table_name, weight.shape[1], pooling, weighted, node.name, fqn)
    site = EmbeddingSite(node.name, kind, fqn, (name,), output.name)
    return site, [feature], [table]


def _module_site(gm: fx.GraphModule, node: fx.Node, taken: set[str], owners: dict[int, str]) -> Found | None:
    module = gm.get_submodule(node.target)
    if isinstance(module, EmbeddingBagCollection):
        return _ebc_site(node, node.target, module, taken)
    if isinstance(module, nn.EmbeddingBag):
        psw = node.kwargs.get("per_sample_weights", node.args[2] if len(node.args) > 2 else None)
        return _plain_site(node, node.target, "embedding_bag", module.weight, f"{node.target}.weight",
                           module.mode, psw is not None, node, taken, owners)
    if isinstance(module, nn.Embedding):
        return _plain_site(node, node.target, "embedding", module.weight, f"{node.target}.weight",
                           "none", False, node, taken, owners)
    return None


def _export_site(gm: fx.GraphModule, node: fx.Node, taken: set[str], owners: dict[int, str]) -> Found:
    weight_node = node.args[0]
    assert weight_node.op == "get_attr", f"embedding weight is {weight_node.op}"
    weight = gm.get_parameter(weight_node.target)
    stack = node.meta.get("nn_module_stack") or {}
    fqn = list(stack.values())[-1][0] if stack else weight_node.target.rpartition(".")[0]
    if node.target in _EXPORT_EMBEDDING_OPS:
        return _plain_site(node, fqn, "embedding", weight, weight_node.target, "none", False,
                           node, taken, owners)
    outputs = [u for u in node.users if u.target is operator.getitem and u.args[1] == 0]
    pooling = _POOLING.get(node.args[4] if len(node.args) > 4 else 0, "sum")
    psw = node.args[6] if len(node.args) > 6 else None
    output = outputs[0] if outputs else node
    return _plain_site(node, fqn, "embedding_bag", weight, weight_node.target, pooling,
                       psw is not None, output, taken, owners)


def find_embedding_sites(gm: fx.GraphModule) -> tuple[tuple[EmbeddingSite, ...], tuple[Feature, ...],
                                                        tuple[Table, ...]]:
    """All embedding lookups in graph order: (sites, features, tables)."""
    sites, features, tables, taken, owners = [], [], [], set(), {}
    for node in gm.graph.nodes:
        found = None
        if node.op == "call_module":
            found = _module_site(gm, node, taken, owners)
        elif node.op == "call_function" and node.target in _EXPORT_BAG_OPS | _EXPORT_EMBEDDING_OPS:
            found = _export_site(gm, node, taken, owners)
        if found is not None:
            sites.append(found[0])
            features += found[1]
            tables += [t for t in found[2] if t.name not in {x.name for x in tables}]
    if not sites:
        raise NoEmbeddingError(
            "the captured graph calls no embedding module",
            "at least one EmbeddingBagCollection, nn.EmbeddingBag or nn.Embedding called in forward()",
            ["check that forward() performs the embedding lookups (modules defined but never called are ignored)"],
        )
    return tuple(sites), tuple(features), tuple(tables)


# ---------------------------------------------------------------- interaction site

def _inputs(node: fx.Node) -> Iterable[fx.Node]:
    return node.all_input_nodes


def _dense_placeholders(gm: fx.GraphModule, site_nodes: set[str]) -> set[str]:
    """Placeholders that feed no embedding lookup: the dense inputs."""
    feeds_sparse: set[str] = set()
    for node in reversed(gm.graph.nodes):
        if node.name in site_nodes or node.name in feeds_sparse:
            feeds_sparse.update(n.name for n in _inputs(node) if n.op != "get_attr")
    return {n.name for n in gm.graph.nodes if n.op == "placeholder" and n.name not in feeds_sparse}


def _kind_of(gm: fx.GraphModule, node: fx.Node) -> str:
    """The registered interaction kind matching `node`, else `other:<module class or op>`."""
    kind = match_interaction(gm, node)
    if kind is not None:
        return kind
    if node.op == "call_module":
        return f"other:{type(gm.get_submodule(node.target)).__name__}"
    return f"other:{getattr(node.target, '__name__', str(node.target))}"


def find_interaction(gm: fx.GraphModule, sites: tuple[EmbeddingSite, ...]) -> InteractionSite:
    """The first node that depends on every embedding output and on a dense input."""
    bit = {s.output: 1 << i for i, s in enumerate(sites)}
    everything = (1 << len(sites)) - 1
    dense = _dense_placeholders(gm, {s.node for s in sites})
    masks: dict[str, int] = {}
    is_dense: dict[str, bool] = {}
    for node in gm.graph.nodes:
        ins = list(_inputs(node))
        masks[node.name] = bit.get(node.name, 0)
        for n in ins:
            masks[node.name] |= masks.get(n.name, 0)
        is_dense[node.name] = node.name in dense or any(is_dense.get(n.name, False) for n in ins)
        if node.op != "output" and masks[node.name] == everything and is_dense[node.name]:
            module = node.target if node.op == "call_module" else None
            return InteractionSite(node.name, _kind_of(gm, node), module)
    raise NoInteractionError(
        f"no node joins all {len(sites)} embedding lookups with a dense input "
        f"(dense inputs: {sorted(dense) or 'none'})",
        "an interaction layer (e.g. torchrec InteractionArch, a pairwise dot or a concatenation) "
        "that combines the pooled embeddings with the dense features",
        ["DMT rewrites DLRM-style models: pass a model whose forward() combines embeddings with dense features",
         "if the embeddings are combined only among themselves, add the dense input to that combination"],
    )


def analyze(gm: fx.GraphModule, route: str) -> ModelSites:
    sites, features, tables = find_embedding_sites(gm)
    interaction = find_interaction(gm, sites)
    dense = _dense_placeholders(gm, {s.node for s in sites})
    return ModelSites(route, sites, features, tables, interaction,
                      tuple(n.name for n in gm.graph.nodes if n.name in dense))
