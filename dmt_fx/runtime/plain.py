"""Plain PyTorch lookups (`nn.EmbeddingBag`, `nn.Embedding`, their aten ops) on TorchRec tables.

At `distribute`, every plain lookup of a tower becomes one table of a TorchRec collection:
  1. read each tower lookup node of the logical graph: its id tensors (indices, offsets,
     per-sample weights) as the *local* tensors that its peer input exchange received, and
     its options; refuse what TorchRec cannot compute the same way (max pooling, max_norm,
     scale_grad_by_freq) with a DMTError naming the module;
  2. group the lookups into virtual collections (one unweighted, one weighted: a TorchRec
     collection is either), whose tables are the original tables (same rows, same weights);
  3. at run time `PlainKJT` turns the local id tensors into one KJT (a bag per sample: 1-D
     ids + offsets, 2-D [B, L] ids, or one id per sample for `nn.Embedding` on [B]), which
     the collection's `HostLookup` sends through the peer KJT all-to-all like any KJT;
  4. `pooled_output` reads each lookup's columns back in the shape the original op returned.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from dmt_fx._compat import op_argument_names
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.names import RUNTIME_ATTR, Role, nodes_with_role, role_of
from dmt_fx.ir.result import DMTResult
from dmt_fx.runtime.padding_idx import drop_padding, local_padding

EMBEDDING_BAG = "embedding_bag"
EMBEDDING = "embedding"
_MODES = {0: "sum", 1: "mean", 2: "max"}  # aten.embedding_bag's `mode`
_POOLING = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}


@dataclasses.dataclass
class PlainLookup:
    """One plain tower lookup: which table, how it pools, and its local id tensors (graph nodes)."""

    origin: str  # the embedding site (node name of the original lookup)
    feature: str  # the feature's name, unique per call site: its KJT key and output name here
    table: str  # the original table's module path
    param: str  # the original weight's fully qualified name
    num_embeddings: int
    dim: int
    host: int  # the host of its tower
    exchange: fx.Node  # its tower's peer input exchange
    form: str  # EMBEDDING_BAG | EMBEDDING
    pooling: str  # sum | mean
    include_last_offset: bool
    indices: fx.Node
    offsets: fx.Node | None
    weights: fx.Node | None
    # A field of a joint table: its rows [row_offset, row_offset + num_embeddings) of the
    # original weight `weight` (`param` is then the field's own key, `joint_field_key`).
    row_offset: int = 0
    weight: str = ""  # the original weight's name when `param` is a joint field's key
    padding_idx: int | None = None  # ids equal to it are dropped from the bags (runtime/padding_idx.py)

    @property
    def weighted(self) -> bool:
        return self.weights is not None

    def config(self, features: Sequence[str]) -> EmbeddingBagConfig:
        return EmbeddingBagConfig(num_embeddings=self.num_embeddings, embedding_dim=self.dim,
                                  name=table_attr(self.table), feature_names=list(features),
                                  pooling=_POOLING[self.pooling])


def plain_kjt_path(collection: int) -> str:
    """Where the rank module keeps the `PlainKJT` of its `collection`-th collection."""
    return f"{RUNTIME_ATTR}.plain_kjt_{collection}"


def table_attr(table: str) -> str:
    """The table's name in a TorchRec collection (one attribute: no dots; a joint table's
    field `emb[2]` becomes `emb__field2`)."""
    return table.replace(".", "__").replace("[", "__field").replace("]", "")


def joint_field_key(param: str, row_offset: int, rows: int) -> str:
    """The rank's state-dict key of one field of a joint table before `JointState` merges the
    fields back into the original key (no dot after the weight's: the owner module is found
    by the part before the last dot)."""
    return f"{param}[{row_offset}:{row_offset + rows}]"


# ---------------------------------------------------------------- step 1: read the graph


def plain_lookups(gm: fx.GraphModule, result: DMTResult, *, sequence: bool = False) -> list[PlainLookup]:
    """Every plain tower lookup of the logical graph, in model (site) order; refuses what
    TorchRec cannot compute like the original op. `sequence`: the unpooled ones instead
    (nn.Embedding read as [B, L] sequences: `dmt_fx.runtime.sequence_lowering`)."""
    order = {s.node: i for i, s in enumerate(result.sites.sites)}
    found = [_read(gm, node, result) for node in nodes_with_role(gm.graph, Role.TOWER_LOOKUP)
             if (node.op != "call_module" or not _is_collection(gm, node)) and _is_sequence(node, result) == sequence]
    return sorted(found, key=lambda lookup: order[lookup.origin])


def _is_collection(gm: fx.GraphModule, node: fx.Node) -> bool:
    return isinstance(gm.get_submodule(str(node.target)), (EmbeddingBagCollection, EmbeddingCollection))


def _is_sequence(node: fx.Node, result: DMTResult) -> bool:
    """A lookup whose feature returns one row per id ([B, L] ids; marked by the transform)."""
    site = next(s for s in result.sites.sites if s.node == node.meta["dmt"]["origin"])
    return result.sites.feature(node.meta["dmt"].get("features", site.features)[0]).sequence


def _read(gm: fx.GraphModule, node: fx.Node, result: DMTResult) -> PlainLookup:
    site = next(s for s in result.sites.sites if s.node == node.meta["dmt"]["origin"])
    # a field lookup of a joint table names its feature (each field its own table)
    feature = result.sites.feature(node.meta["dmt"].get("features", site.features)[0])
    table = result.sites.table(feature.table)
    param = joint_field_key(table.param, table.row_offset, table.num_embeddings) if table.joint else table.param
    args, options = _arguments(gm, node)
    if role_of(args["indices"]) == Role.FIELD_ROWS:  # a sparse-gradient field: received ids + offset
        args["indices"] = args["indices"].args[0]
    _check(site.module, options)
    form = EMBEDDING if options["form"] == EMBEDDING else EMBEDDING_BAG
    if form == EMBEDDING and not feature.sequence:  # a sequence runs unpooled (runtime/sequence.py)
        _check_ids(site.module, _local(args["indices"]))
    exchange = args["indices"].args[0]
    # The feature's name, not its key: a table called for several fields has one key (its
    # module path) but one name per call site, and a KJT needs unique keys. The calls stay
    # one TorchRec table with several feature_names (`host_collection`): shared weights.
    return PlainLookup(site.node, feature.name, table.name, param, table.num_embeddings, table.embedding_dim,
                       node.meta["dmt"]["host"], exchange, form, options["pooling"], bool(options["include_last_offset"]),
                       _local(args["indices"]), _local(args.get("offsets")), _local(args.get("weights")),
                       table.row_offset, table.param,
                       local_padding(options["padding_idx"], table.row_offset, table.num_embeddings))


def _arguments(gm: fx.GraphModule, node: fx.Node) -> tuple[dict[str, Any], dict[str, Any]]:
    """(id tensor nodes, options) of a lookup node, whichever capture route made it."""
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        bound = inspect.signature(module.forward).bind(*node.args, **node.kwargs).arguments
        values = list(bound.values())
        bag = isinstance(module, nn.EmbeddingBag)
        args = {"indices": values[0], "offsets": bound.get("offsets"), "weights": bound.get("per_sample_weights")}
        options = {"form": EMBEDDING_BAG if bag else EMBEDDING, "pooling": module.mode if bag else "sum",
                   "include_last_offset": bag and module.include_last_offset, "max_norm": module.max_norm,
                   "padding_idx": module.padding_idx, "scale_grad_by_freq": module.scale_grad_by_freq}
        return args, options
    schema = op_argument_names(node.target)
    bound = {**dict(zip(schema, node.args)), **node.kwargs}
    bag = "embedding_bag" in str(node.target)
    padding = bound.get("padding_idx")
    args = {"indices": bound["indices"], "offsets": bound.get("offsets"), "weights": bound.get("per_sample_weights")}
    options = {"form": EMBEDDING_BAG if bag else EMBEDDING, "pooling": _MODES[bound.get("mode", 0)] if bag else "sum",
               "include_last_offset": bound.get("include_last_offset", False), "max_norm": None,
               "padding_idx": None if padding is None or padding < 0 else padding,
               "scale_grad_by_freq": bound.get("scale_grad_by_freq", False)}
    return args, options


def _local(node: Any) -> fx.Node | None:
    """The local tensor a received id tensor came from: the peer input exchange's input."""
    if not isinstance(node, fx.Node):
        return None
    assert role_of(node) == Role.RECEIVED_IDS, f"{node.name} is not a received id tensor"
    exchange, item = node.args
    return exchange.args[0][item]


def _check(module: str, options: dict[str, Any]) -> None:
    """What TorchRec's pooled tables cannot compute the way the original op does."""
    problems = {
        "pooling": (options["pooling"] not in _POOLING, f"mode={options['pooling']!r}",
                    "sum or mean pooling (TorchRec's pooled tables: SUM, MEAN)"),
        "max_norm": (options["max_norm"] is not None, f"max_norm={options['max_norm']}",
                     "no max_norm (it renormalises rows in forward; TorchRec tables do not)"),
        "scale_grad_by_freq": (bool(options["scale_grad_by_freq"]), "scale_grad_by_freq=True",
                               "scale_grad_by_freq=False (the fused optimizers update per id)"),
    }
    for _, (bad, found, expected) in problems.items():
        if bad:
            raise DMTError(f"embedding lookup {module!r} with {found}", expected,
                           [f"build {module!r} without that option to distribute it",
                            "run the transformed model in one process (it keeps every option)"])


def _check_ids(module: str, ids: fx.Node | None) -> None:
    """Sequence outputs, where the capture kept the ids' shape (the export route's `val`; a
    symbolic capture keeps none, and `bags` refuses them on the rank, before any exchange).
    A size that is not the literal 1 (a symbolic size, or L > 1) means [B, L] ids."""
    shape = tuple(getattr(ids.meta.get("val"), "shape", ())) if ids is not None else ()
    if len(shape) == 2 and not (type(shape[1]) is int and shape[1] == 1):
        raise sequence_error(module, "(" + ", ".join(str(size) for size in shape) + ")")


# ---------------------------------------------------------------- step 2: virtual collections


def plain_groups(lookups: Sequence[PlainLookup]) -> list[list[PlainLookup]]:
    """The lookups as virtual collections: unweighted first, then weighted (model order in each)."""
    groups = [[lk for lk in lookups if not lk.weighted], [lk for lk in lookups if lk.weighted]]
    groups = [g for g in groups if g]
    tables = [{lk.table for lk in g} for g in groups]
    if len(tables) == 2 and tables[0] & tables[1]:
        raise DMTError(f"tables {sorted(tables[0] & tables[1])} read with and without per_sample_weights",
                       "each table read either always with per-sample weights or never",
                       ["pass per_sample_weights (ones) at every call of the table"])
    return groups


def host_collection(lookups: Sequence[PlainLookup]) -> EmbeddingBagCollection:
    """A TorchRec collection over the tables of `lookups` (on the meta device: the sharder
    allocates the shards, `copy_into_shards` fills them with the original weights)."""
    by_table: dict[str, list[PlainLookup]] = {}
    for lookup in lookups:
        by_table.setdefault(lookup.table, []).append(lookup)
    configs = [group[0].config([lk.feature for lk in group]) for group in by_table.values()]
    weighted = bool(lookups) and lookups[0].weighted
    return EmbeddingBagCollection(configs, is_weighted=weighted, device=torch.device("meta"))


def original_weights(gm: nn.Module, lookups: Sequence[PlainLookup]) -> dict[str, torch.Tensor]:
    """The original tables under the collection's state-dict keys (for `copy_into_shards`)."""
    return {f"embedding_bags.{table_attr(lk.table)}.weight": _rows(gm.get_parameter(lk.weight or lk.param), lk)
            for lk in lookups}


def _rows(weight: torch.Tensor, lookup: PlainLookup) -> torch.Tensor:
    """The lookup's rows of the weight: all of them, or a joint table field's range."""
    return weight.detach().narrow(0, lookup.row_offset, lookup.num_embeddings)


# ---------------------------------------------------------------- steps 3-4: run time


class PlainKJT(nn.Module):
    """The local id tensors of a virtual collection's lookups -> one KJT, a bag per sample."""

    def __init__(self, lookups: Sequence[PlainLookup]) -> None:
        super().__init__()
        self.keys = [lk.feature for lk in lookups]
        self.forms = [(lk.form, lk.offsets is not None, lk.include_last_offset, lk.weighted) for lk in lookups]
        self.padding = [lk.padding_idx for lk in lookups]

    def forward(self, *tensors: torch.Tensor) -> KeyedJaggedTensor:
        values, lengths, weights, strides = [], [], [], set()
        it = iter(tensors)
        for key, (form, has_offsets, last, weighted), padding in zip(self.keys, self.forms, self.padding):
            ids = next(it)
            offsets = next(it) if has_offsets else None
            v, n = bags(key, form, ids, offsets, last)
            w = next(it).reshape(-1) if weighted else None
            if padding is not None:
                v, n, w = drop_padding(v, n, w, padding)
            values.append(v)
            lengths.append(n)
            strides.add(n.numel())
            if w is not None:
                weights.append(w)
        if len(strides) != 1:
            raise DMTError(f"local batch sizes {sorted(strides)} across the lookups {self.keys}",
                           "every lookup with one bag per sample of the batch", ["pass one bag per sample"])
        return KeyedJaggedTensor(keys=self.keys, values=torch.cat(values).long(), lengths=torch.cat(lengths),
                                 weights=torch.cat(weights) if weights else None, stride=strides.pop())


def plain_kjt_inputs(lookups: Sequence[PlainLookup]) -> list[fx.Node]:
    """The graph nodes `PlainKJT` takes, in its order."""
    nodes: list[fx.Node] = []
    for lk in lookups:
        nodes += [n for n in (lk.indices, lk.offsets, lk.weights) if n is not None]
    return nodes


def bags(key: str, form: str, ids: torch.Tensor, offsets: torch.Tensor | None,
         include_last_offset: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, lengths) of one lookup's bags, one bag per sample."""
    if offsets is not None:
        ends = offsets[1:] if include_last_offset else torch.cat([offsets[1:], offsets.new_tensor([ids.numel()])])
        starts = offsets[:-1] if include_last_offset else offsets
        return ids, (ends - starts).long()
    if form == EMBEDDING and ids.dim() == 2 and ids.shape[1] != 1:
        raise sequence_error(key, str(tuple(ids.shape)))
    if ids.dim() == 1:
        return ids, torch.ones_like(ids, dtype=torch.long)
    return ids.reshape(-1), torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long, device=ids.device)


def sequence_error(module: str, shape: str) -> DMTError:
    """nn.Embedding on [B, L] ids returns a [B, L, D] sequence; TorchRec's pooled tables cannot."""
    return DMTError(f"nn.Embedding {module!r} on ids of shape {shape} (a [B, L, D] sequence output) in a "
                    "model transformed without such ids in example_inputs",
                    "ids of shape [B] or [B, 1] (one id per sample), or a lookup the transform saw read as "
                    "[B, L] ids, which then runs as a sequence (TorchRec's sharded EmbeddingCollection)",
                    [f"pass example_inputs to dmt_fx.transform with the [B, L] ids {module!r} reads",
                     f"or pool the sequence in the model (nn.EmbeddingBag for {module!r})"])


def pooled_output(kt: KeyedTensor, key: str, form: str, ids: torch.Tensor) -> torch.Tensor:
    """One lookup's columns in the shape the original op returned ([B, 1, D] for nn.Embedding
    on [B, 1] ids, else [B, D])."""
    values = kt.to_dict()[key]
    return values.unsqueeze(1) if form == EMBEDDING and ids.dim() == 2 else values


def lookup_output(graph: fx.Graph, lookup: PlainLookup) -> fx.Node:
    """The node the logical tower lookup's output is read from (item 0 on the export route)."""
    outputs = list(nodes_with_role(graph, Role.LOOKUP_OUTPUT, origin=lookup.origin))
    if outputs:
        return outputs[0]
    # the fields of a joint table are several lookups of one origin: each names its feature
    return next(n for n in nodes_with_role(graph, Role.TOWER_LOOKUP, origin=lookup.origin)
                if lookup.feature in n.meta["dmt"].get("features", (lookup.feature,)))


def received_output(graph: fx.Graph, lookup: PlainLookup) -> fx.Node:
    """The received embeddings node carrying `lookup`'s output back (identity tower modules)."""
    source = lookup_output(graph, lookup)
    for node in nodes_with_role(graph, Role.RECEIVED_EMBEDDINGS):
        exchange, item = node.args
        sent = exchange.args[0]
        sent = sent[item] if isinstance(sent, (tuple, list)) else sent.args[item]  # identity tower module
        if sent is source:
            return node
    raise AssertionError(f"no received embeddings for {lookup.origin}")

