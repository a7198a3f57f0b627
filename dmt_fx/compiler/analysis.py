"""Read-only analyses of a captured graph: embedding sites and the interaction site.

Results are frozen dataclasses keyed by node *names* and module paths, never by Node
objects, so a plan built from them survives copies of the graph.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
from collections import Counter
from typing import Iterable

import torch
import torch.fx as fx
import torch.nn as nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from dmt_fx._compat import ASSERT_OPS, EMBEDDING_BAG_OP
from dmt_fx.compiler.interactions import match_interaction
from dmt_fx.compiler.joint import JointOffsets, joint_offsets
from dmt_fx.ir.errors import NoEmbeddingError, NoInteractionError
from dmt_fx.ir.sites import NO_INTERACTION, SEQUENCE_KIND, EmbeddingSite, Feature, InteractionSite, ModelSites, Table

_POOLING = {0: "sum", 1: "mean", 2: "max"}
_EXPORT_BAG_OPS = {
    torch.ops.aten.embedding_bag.padding_idx,
    torch.ops.aten.embedding_bag.default,
    EMBEDDING_BAG_OP,
}
_EXPORT_EMBEDDING_OPS = {torch.ops.aten.embedding.default}
Found = tuple[EmbeddingSite, list[Feature], list[Table]]  # one lookup's site, its features and tables
log = logging.getLogger(__name__)


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


def _ec_site(node: fx.Node, fqn: str, ec: EmbeddingCollection, taken: set[str]) -> Found:
    """A torchrec EmbeddingCollection: unpooled (sequence) features, one per KJT key it reads."""
    features, tables = [], []
    for config in ec.embedding_configs():
        table_fqn = f"{fqn}.embeddings.{config.name}"
        weight = ec.embeddings[config.name].weight
        tables.append(Table(table_fqn, f"{table_fqn}.weight", config.num_embeddings,
                            config.embedding_dim, weight.element_size()))
        for key in config.feature_names:
            name = key if key not in taken else f"{fqn}:{key}"
            taken.add(name)
            features.append(Feature(name, table_fqn, config.embedding_dim, "none", False, node.name, key,
                                    sequence=True))
    site = EmbeddingSite(node.name, SEQUENCE_KIND, fqn, tuple(f.name for f in features), node.name)
    return site, features, tables


@dataclasses.dataclass(frozen=True)
class _PlainLookup:
    """One plain lookup before naming: tables are named once every lookup is known."""
    node: fx.Node
    fqn: str  # the module that performs it
    kind: str
    weight: torch.Tensor
    param: str
    pooling: str
    weighted: bool
    output: fx.Node


def _module_site(gm: fx.GraphModule, node: fx.Node, taken: set[str]) -> Found | _PlainLookup | None:
    module = gm.get_submodule(node.target)
    if isinstance(module, EmbeddingBagCollection):
        return _ebc_site(node, node.target, module, taken)
    if isinstance(module, EmbeddingCollection):
        return _ec_site(node, node.target, module, taken)
    if isinstance(module, nn.EmbeddingBag):
        psw = node.kwargs.get("per_sample_weights", node.args[2] if len(node.args) > 2 else None)
        return _PlainLookup(node, node.target, "embedding_bag", module.weight, f"{node.target}.weight",
                            module.mode, psw is not None, node)
    if isinstance(module, nn.Embedding):
        return _PlainLookup(node, node.target, "embedding", module.weight, f"{node.target}.weight",
                            "none", False, node)
    return None


def _export_site(gm: fx.GraphModule, node: fx.Node) -> _PlainLookup:
    weight_node = node.args[0]
    assert weight_node.op == "get_attr", f"embedding weight is {weight_node.op}"
    weight = gm.get_parameter(weight_node.target)
    stack = node.meta.get("nn_module_stack") or {}
    fqn = list(stack.values())[-1][0] if stack else weight_node.target.rpartition(".")[0]
    if node.target in _EXPORT_EMBEDDING_OPS:
        return _PlainLookup(node, fqn, "embedding", weight, weight_node.target, "none", False, node)
    outputs = [u for u in node.users if u.target is operator.getitem and u.args[1] == 0]
    pooling = _POOLING.get(node.args[4] if len(node.args) > 4 else 0, "sum")
    psw = node.args[6] if len(node.args) > 6 else None
    return _PlainLookup(node, fqn, "embedding_bag", weight, weight_node.target, pooling, psw is not None,
                        outputs[0] if outputs else node)


def _composite_modules(lookups: list[_PlainLookup]) -> set[str]:
    """Modules that read more than one table (a quotient-remainder bag reads weight_q and
    weight_r): each of their tables is named by its parameter and they form one unit."""
    weights: dict[str, set[int]] = {}
    for lk in lookups:
        weights.setdefault(lk.fqn, set()).add(id(lk.weight))
    return {fqn for fqn, ids in weights.items() if len(ids) > 1}


def _plain_site(lk: _PlainLookup, composite: bool, taken: set[str], owners: dict[int, str]) -> Found:
    base = lk.param if composite else lk.fqn
    # One module may be called several times (a shared table): name the calls apart.
    name, k = base, 1
    while name in taken:
        name, k = f"{base}@{k}", k + 1
    taken.add(name)
    table_name = owners.setdefault(id(lk.weight), base)  # tied weights share one table
    dim = lk.weight.shape[1]
    table = Table(table_name, lk.param, lk.weight.shape[0], dim, lk.weight.element_size())
    unit = lk.fqn if composite and lk.fqn else ""
    feature = Feature(name, table_name, dim, lk.pooling, lk.weighted, lk.node.name, lk.fqn, unit)
    site = EmbeddingSite(lk.node.name, lk.kind, lk.fqn, (name,), lk.output.name)
    return site, [feature], [table]


def _joint_site(lk: _PlainLookup, offsets: tuple[int, ...], taken: set[str]) -> Found:
    """A joint table split by field: one feature and one table (its row range) per field."""
    base, k = lk.fqn, 1
    while base in taken:
        base, k = f"{lk.fqn}@{k}", k + 1
    taken.add(base)
    rows = lk.weight.shape[0]
    ends = offsets[1:] + (rows,)
    dim, size = lk.weight.shape[1], lk.weight.element_size()
    tables = [Table(f"{lk.fqn}[{i}]", lk.param, end - start, dim, size, start, lk.fqn)
              for i, (start, end) in enumerate(zip(offsets, ends))]
    features = [Feature(f"{base}[{i}]", t.name, dim, lk.pooling, False, lk.node.name, lk.fqn, "", i)
                for i, t in enumerate(tables)]
    site = EmbeddingSite(lk.node.name, lk.kind, lk.fqn, tuple(f.name for f in features), lk.output.name)
    return site, features, tables


def _lookup_options(gm: fx.GraphModule, lk: _PlainLookup) -> list[str]:
    """Options of an nn.Embedding lookup that a per-field row range would not keep."""
    if lk.node.op == "call_module":
        m = gm.get_submodule(lk.node.target)
        found = {"padding_idx": m.padding_idx is not None, "max_norm": m.max_norm is not None,
                 "scale_grad_by_freq": m.scale_grad_by_freq}
    else:
        args = list(lk.node.args) + [None] * 5
        found = {"padding_idx": args[2] not in (None, -1), "scale_grad_by_freq": bool(args[3])}
    # sparse=True (NVIDIA DLRM's joint mode) changes only the gradient's layout: each field's
    # rows get the same values (in one process as a sparse gradient of the weight: each field
    # reads it at its offset ids), and distributed, TorchRec's tables train them
    return [name for name, on in found.items() if on]


def _joint_verdict(gm: fx.GraphModule, lk: _PlainLookup, readers: int) -> JointOffsets | None:
    """Whether an nn.Embedding lookup is a joint table that splits by field, or why not."""
    verdict = joint_offsets(gm, lk.node, lk.weight.shape[0])
    if verdict is None or not verdict.splits:
        return verdict if lk.kind == "embedding" else None
    if lk.kind != "embedding":  # a bag of one id per field sums the fields: a split would reorder the sum
        return JointOffsets(reason="an nn.EmbeddingBag pools the fields of a sample into one bag; split by "
                                   "field is done for nn.Embedding (one output row per field)")
    options = _lookup_options(gm, lk)
    if options:
        return JointOffsets(reason=f"it is built with {', '.join(options)}, which a per-field row range "
                                   "would not keep")
    if readers > 1:
        return JointOffsets(reason=f"its weight is read by {readers} lookups (a split needs one)")
    return verdict


def _joint_warning(lk: _PlainLookup, reason: str) -> str:
    return f"joint table {lk.fqn!r} stays whole (one tower): {reason}"


def find_embedding_sites(gm: fx.GraphModule) -> tuple[tuple[EmbeddingSite, ...], tuple[Feature, ...],
                                                        tuple[Table, ...], tuple[str, ...]]:
    """All embedding lookups in graph order: (sites, features, tables, warnings). Every
    physical table appears once, also the second table of a composite (quotient-remainder)
    embedding; a joint table with constant per-field offsets appears as one table per field."""
    found_or_lookups: list[Found | _PlainLookup] = []
    taken: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            found = _module_site(gm, node, taken)
            if found is not None:
                found_or_lookups.append(found)
        elif node.op == "call_function" and node.target in _EXPORT_BAG_OPS | _EXPORT_EMBEDDING_OPS:
            found_or_lookups.append(_export_site(gm, node))
    plain = [x for x in found_or_lookups if isinstance(x, _PlainLookup)]
    composite = _composite_modules(plain)
    readers = Counter(id(lk.weight) for lk in plain)  # counted once: list.count per lookup is quadratic
    sites, features, tables, owners, warnings = [], [], [], {}, []
    for item in found_or_lookups:
        if isinstance(item, _PlainLookup):
            verdict = _joint_verdict(gm, item, readers[id(item.weight)])
            if verdict is not None and not verdict.splits and _joint_warning(item, verdict.reason) not in warnings:
                warnings.append(_joint_warning(item, verdict.reason))  # once for a table read twice
                log.warning("analysis: %s", warnings[-1])
            found = (_joint_site(item, verdict.offsets, taken) if verdict is not None and verdict.splits
                     else _plain_site(item, item.fqn in composite, taken, owners))
        else:
            found = item
        sites.append(found[0])
        features += found[1]
        tables += [t for t in found[2] if t.name not in {x.name for x in tables}]
    if not sites:
        raise NoEmbeddingError(
            "the captured graph calls no embedding module",
            "at least one EmbeddingBagCollection, nn.EmbeddingBag or nn.Embedding called in forward()",
            ["check that forward() performs the embedding lookups (modules defined but never called are ignored)"],
        )
    return tuple(sites), tuple(features), tuple(tables), tuple(warnings)


# ---------------------------------------------------------------- interaction site

def _inputs(node: fx.Node) -> Iterable[fx.Node]:
    return node.all_input_nodes


# Nodes that read only a tensor's shape: a batch size taken from the ids is not dense data.
_METADATA_METHODS = {"size", "stride", "dim", "numel", "keys"}
_METADATA_ATTRS = {"shape", "dtype", "device"}
_METADATA_FUNCTIONS = {torch.ops.aten.sym_size.int, torch.ops.aten.sym_stride.int, torch.ops.aten.sym_numel.default,
                       len, *ASSERT_OPS}  # ASSERT_OPS: export's checks (of a .long() cast, ...)
_GUARDS = "_guards_fn"  # torch.export's shape guards: they check inputs and return nothing


def _is_metadata(node: fx.Node) -> bool:
    if node.op == "call_module":
        return node.target == _GUARDS
    if node.op == "call_method":
        return node.target in _METADATA_METHODS
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] in _METADATA_ATTRS
    return node.op == "call_function" and node.target in _METADATA_FUNCTIONS


def _ids_only(gm: fx.GraphModule, site_nodes: set[str]) -> set[str]:
    """Nodes whose every use is as ids of a lookup (directly, through other such nodes, or
    for their shape): the sparse side of the inputs."""
    ids_only: set[str] = set()
    for node in reversed(gm.graph.nodes):
        users = list(node.users)
        if users and node.name not in site_nodes and all(
                u.name in site_nodes or u.name in ids_only or _is_metadata(u) for u in users):
            ids_only.add(node.name)
    return ids_only


def _dense_nodes(gm: fx.GraphModule, site_nodes: set[str]) -> set[str]:
    """Nodes carrying dense data: "dense" is a property of the data flow (what reaches the
    output without a lookup), not of a placeholder. A batch object, a dict or one float
    tensor holding id columns next to dense ones is dense; its parts used only as ids are not."""
    ids_only = _ids_only(gm, site_nodes)
    dense: set[str] = set()
    for node in gm.graph.nodes:
        if node.name in ids_only or node.name in site_nodes or _is_metadata(node):
            continue
        if node.op == "placeholder" or any(n.name in dense for n in _inputs(node)):
            dense.add(node.name)
    return dense


def _dense_placeholders(gm: fx.GraphModule, site_nodes: set[str]) -> set[str]:
    """The inputs carrying dense data (the validator checks their batch size)."""
    return {n.name for n in gm.graph.nodes if n.op == "placeholder" and n.name in _dense_nodes(gm, site_nodes)}


def _kind_of(gm: fx.GraphModule, node: fx.Node) -> str:
    """The registered interaction kind matching `node`, else `other:<module class or op>`."""
    kind = match_interaction(gm, node)
    if kind is not None:
        return kind
    if node.op == "call_module":
        return f"other:{type(gm.get_submodule(node.target)).__name__}"
    return f"other:{getattr(node.target, '__name__', str(node.target))}"


def find_interaction(gm: fx.GraphModule, sites: tuple[EmbeddingSite, ...]) -> InteractionSite:
    """The first node that depends on every embedding output and on dense data, or a site of
    kind "none" when the embeddings never meet dense data (factorization machines, two-tower
    retrieval): the identity rewrite needs none; compressing tower modules refuse such models."""
    bit = {s.output: 1 << i for i, s in enumerate(sites)}
    everything = (1 << len(sites)) - 1
    dense = _dense_nodes(gm, {s.node for s in sites})
    masks: dict[str, int] = {}
    for node in gm.graph.nodes:
        masks[node.name] = bit.get(node.name, 0)
        for n in _inputs(node):
            masks[node.name] |= masks.get(n.name, 0)
        if node.op != "output" and masks[node.name] == everything and node.name in dense:
            module = node.target if node.op == "call_module" else None
            kind = _kind_of(gm, node)
            parts = _summands(gm, node) if kind.startswith("other:") else ()
            return InteractionSite(node.name, kind, module, parts)
    return InteractionSite("", NO_INTERACTION, None)


SUM_OPS = {operator.add, operator.iadd, torch.add, torch.ops.aten.add.Tensor}


def _summands(gm: fx.GraphModule, node: fx.Node) -> tuple[str, ...]:
    """The parts a sum adds (each named by the layers it comes from), or () for other nodes."""
    if node.op != "call_function" or node.target not in SUM_OPS:
        return ()
    return tuple(_origin(gm, n) for n in node.args if isinstance(n, fx.Node))


def _origin(gm: fx.GraphModule, node: fx.Node, limit: int = 3) -> str:
    """A summand as the nearest layers (modules) it is computed from."""
    layers: list[str] = []
    frontier, seen = [node], set()
    while frontier and len(layers) < limit:
        n = frontier.pop(0)
        if n in seen:
            continue
        seen.add(n)
        path = n.target if n.op == "call_module" else (list(n.meta.get("nn_module_stack", {}).values()) or [("",)])[-1][0]
        if path and path not in layers:
            layers.append(str(path))
            continue
        frontier += [a for a in n.all_input_nodes if a.op != "placeholder"]
    return f"{node.name} (from {', '.join(layers)})" if layers else node.name


def require_interaction(sites: ModelSites, why: str) -> None:
    """Refuse `why` (a compressing tower module) on a model without an interaction site, or
    whose embeddings meet the dense data only in a sum of parts, or with sequence features."""
    sequences = [f.name for f in sites.features if f.sequence]
    if sequences:
        raise NoInteractionError(
            f"{why} on a model with sequence (unpooled) features {sequences}",
            "pooled features only: a compressing tower module compresses a tower's pooled rows, and a "
            "sequence feature returns one row per id",
            ["keep tower_module='identity' (the default): sequence features run exact, distributed too",
             "or tower_module='seq_mean' / 'seq_attention': a sequence kind reduces each EmbeddingCollection "
             "sequence inside its host (pooled features kept as they are)",
             "or pool the sequences in the model (an EmbeddingBagCollection, nn.EmbeddingBag) to compress them"],
        )
    if sites.interaction.parts:
        raise NoInteractionError(
            f"{why} on a model whose embeddings meet the dense data first in a sum of parts at node "
            f"{sites.interaction.node!r}: {'; '.join(sites.interaction.parts)} (the DeepFM / Wide&Deep form: "
            "a linear part, an FM part and a deep MLP each read the embeddings on their own path)",
            "one interaction that every embedding enters (a concatenation, a pairwise dot, a torchrec "
            "interaction arch): the compressed tower outputs replace the per-feature embeddings there, and a "
            "sum of parts has no one place to feed them",
            ["keep tower_module='identity' (the default): exact",
             "or register an interaction kind for your deep part (dmt_fx.register_interaction) whose rewriter "
             "also rewires the other parts"],
        )
    if sites.interaction.found:
        return
    raise NoInteractionError(
        f"{why} on a model whose {len(sites.sites)} embedding lookups never meet dense data in one node "
        f"(dense inputs: {', '.join(sites.dense_inputs) or 'none'})",
        "an interaction layer (e.g. torchrec InteractionArch, a pairwise dot or a concatenation) that "
        "combines the pooled embeddings with the dense features, for the compressed towers to feed",
        ["keep tower_module='identity' (the default): it needs no interaction site and preserves the model",
         "register your combination of embeddings with dmt_fx.register_interaction and pass the dense input to it"],
    )


def analyze(gm: fx.GraphModule, route: str) -> ModelSites:
    sites, features, tables, warnings = find_embedding_sites(gm)
    interaction = find_interaction(gm, sites)
    dense = _dense_placeholders(gm, {s.node for s in sites})
    return ModelSites(route, sites, features, tables, interaction,
                      tuple(n.name for n in gm.graph.nodes if n.name in dense), warnings)
