"""Where the model's own code reduces each sequence feature, and whether a sequence tower
module (`seq_mean`, `seq_attention`: tower_modules/sequence.py) can take that reduction's place.

A sequence feature is read as a JaggedTensor (`jts[key]` of an EmbeddingCollection's dict)
or as [B, L, D] rows (`nn.Embedding` on [B, L] ids). Its reduction is the first node after
the read that (a) holds a (B, D) tensor on the example batch and (b) is the only way the
rows reach the rest of the model: every node computed from the rows before it is used only
on the way to it. A sequence tower module's (B, D) output replaces that node; the nodes
between the read and it drop out of the rewritten model. What the reduction computes is
told by value, on the example batch: the rows' mean (seq_mean is exact with c = 1), the last
row, the sum, or something else (the model reads rows: any sequence tower module changes it).
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import torch
import torch.fx as fx
from torchrec.sparse.jagged_tensor import JaggedTensor

from dmt_fx._compat import pytree
from dmt_fx.compiler.tower_modules.sequence import MeanPool
from dmt_fx.ir.sites import SEQUENCE_KIND, ModelSites

EXACT, LAST, SUM, ROWS, NONE = "mean", "last", "sum", "rows", "none"


@dataclasses.dataclass(frozen=True)
class SequenceReduction:
    feature: str
    kind: str  # EXACT, LAST, SUM, ROWS (a reduction node, other values) or NONE (no reduction node)
    node: str | None  # the reduction node's name in the captured graph
    reads: tuple[str, ...]  # the read nodes (jts[key] getitems, or the [B, L, D] lookup output)
    layers: tuple[str, ...] = ()  # the model's layers between the read and the reduction
    plain: bool = False  # nn.Embedding on [B, L] ids (sequence kinds take EmbeddingCollection features only)

    @property
    def verdict(self) -> str:
        """One line for `dmt-fx plan`: can a sequence tower module take the reduction's place?"""
        if self.plain:
            return (f"{self.what}; sequence tower modules take EmbeddingCollection features only "
                    "(keep identity for nn.Embedding [B, L] reads)")
        return self.what

    @property
    def what(self) -> str:
        at = f" at node {self.node!r}" if self.node else ""
        if self.kind == EXACT:
            return f"model reduces by mean{at}: seq_mean is exact with c=1"
        if self.kind == LAST:
            return f"model picks the last item{at}: a sequence tower module changes the model (no kind picks it)"
        if self.kind == SUM:
            return f"model sums the rows{at}: seq_mean changes the model (a mean, not a sum)"
        if self.kind == ROWS:
            through = f" ({', '.join(self.layers)})" if self.layers else ""
            return f"model reads rows{through} before its reduction{at}: a sequence tower module changes the model"
        return "model reads rows with no single (B, D) reduction: no sequence tower module can take its place"

    def as_record(self) -> dict[str, Any]:
        return {"kind": self.kind, "node": self.node, "layers": list(self.layers), "verdict": self.verdict}


def find_reductions(gm: fx.GraphModule, sites: ModelSites, inputs: tuple, route: str) -> dict[str, SequenceReduction]:
    """Per sequence feature, its reduction in `gm` (the captured model), judged on `inputs`."""
    sequences = [f for f in sites.features if f.sequence]
    if not sequences:
        return {}
    values = _record(gm, inputs, route)
    site_of = {s.node: s for s in sites.sites}
    nodes = {n.name: n for n in gm.graph.nodes}
    found = {}
    for f in sequences:
        site = site_of[f.site]
        if site.kind == SEQUENCE_KIND:
            reads = [u for u in nodes[site.node].users if u.target is operator.getitem and u.args[1] == f.key]
        else:
            reads = [nodes[site.output]]
        found[f.name] = dataclasses.replace(_judge(f.name, reads, f.dim, values), plain=site.kind != SEQUENCE_KIND)
    return found


def _record(gm: fx.GraphModule, inputs: tuple, route: str) -> dict[fx.Node, Any]:
    """Every node's value on `inputs` (no grad; the buffers as they were afterwards)."""
    args = pytree.tree_leaves(inputs) if route == "export" else list(inputs)
    saved = [(b, b.detach().clone()) for b in gm.buffers()]
    values: dict[fx.Node, Any] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            values[n] = result = super().run_node(n)
            return result

    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # the caller's RNG untouched (dropout)
            Recorder(gm).run(*args)
    finally:
        with torch.no_grad():
            for b, old in saved:
                b.copy_(old)
    return values


def _judge(feature: str, reads: list[fx.Node], dim: int, values: dict[fx.Node, Any]) -> SequenceReduction:
    if not reads or any(r not in values for r in reads):
        return SequenceReduction(feature, NONE, None, tuple(r.name for r in reads))
    rows = values[reads[0]]
    batch = rows.lengths().numel() if isinstance(rows, JaggedTensor) else rows.shape[0]
    derived = _derived(reads)
    for node in (n for n in reads[0].graph.nodes if n in derived):
        value = values.get(node)
        if not (isinstance(value, torch.Tensor) and tuple(value.shape) == (batch, dim)):
            continue
        before = _ancestors(node, derived) | set(reads)
        if all(u in before or u is node for n in before for u in n.users):
            kind = _what(value, rows)
            layers = _layers(before - set(reads))
            return SequenceReduction(feature, kind, node.name, tuple(r.name for r in reads), layers)
    return SequenceReduction(feature, NONE, None, tuple(r.name for r in reads))


def _derived(reads: list[fx.Node]) -> set[fx.Node]:
    """Every node computed from the reads (the reads included)."""
    derived = set(reads)
    for node in reads[0].graph.nodes:
        if any(i in derived for i in node.all_input_nodes):
            derived.add(node)
    return derived


def _ancestors(node: fx.Node, within: set[fx.Node]) -> set[fx.Node]:
    seen, stack = set(), [i for i in node.all_input_nodes if i in within]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack += [i for i in n.all_input_nodes if i in within]
    return seen


def _what(value: torch.Tensor, rows: Any) -> str:
    """What the reduction's value is, compared with the rows' mean, last row and sum."""
    if isinstance(rows, JaggedTensor):
        lengths = rows.lengths().long()
        mean = MeanPool()(rows.values(), lengths)
        total = mean * lengths.clamp(min=1).unsqueeze(1).to(mean.dtype)
        last = mean.new_zeros(mean.shape)
        ends = rows.offsets()[1:].long() - 1
        last[lengths > 0] = rows.values()[ends[lengths > 0]]
    else:
        mean, last, total = rows.mean(1), rows[:, -1], rows.sum(1)
    for kind, reference in ((EXACT, mean), (LAST, last), (SUM, total)):
        if torch.allclose(value, reference, rtol=1e-5, atol=1e-6):
            return kind
    return ROWS


def _layers(nodes: set[fx.Node], limit: int = 3) -> tuple[str, ...]:
    """The model's modules among `nodes` (call_module targets, else their module stacks)."""
    layers: list[str] = []
    for n in sorted(nodes, key=lambda n: list(n.graph.nodes).index(n)):
        path = str(n.target) if n.op == "call_module" else (list(n.meta.get("nn_module_stack", {}).values())
                                                              or [("",)])[-1][0]
        if path and path not in layers:
            layers.append(str(path))
    return tuple(layers[:limit])
