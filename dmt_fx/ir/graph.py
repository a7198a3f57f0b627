"""Small graph helpers shared by the passes and the runtime (not a pass)."""

from __future__ import annotations

import heapq
from typing import Any

import torch.fx as fx

from dmt_fx._compat import graph_root


def tag(node: fx.Node, pass_name: str, role: str, **extra: Any) -> fx.Node:
    """Record provenance: which pass made the node, its DMT role, tower and origin."""
    node.meta["dmt"] = {"pass": pass_name, "role": role, **extra}
    return node


def stable_toposort(graph: fx.Graph) -> None:
    """Reorder nodes topologically, keeping the current order wherever it is legal.

    The rewrite inserts tower blocks before the first lookup; users of later lookups and
    inputs defined later are then pulled into place here."""
    nodes = list(graph.nodes)
    position = {n: i for i, n in enumerate(nodes)}
    pending = {n: len(set(n.all_input_nodes)) for n in nodes}
    ready = [(position[n], n.name) for n in nodes if pending[n] == 0]
    by_name = {n.name: n for n in nodes}
    heapq.heapify(ready)
    ordered: list[fx.Node] = []
    while ready:
        _, name = heapq.heappop(ready)
        node = by_name[name]
        ordered.append(node)
        for user in node.users:
            pending[user] -= 1
            if pending[user] == 0:
                heapq.heappush(ready, (position[user], user.name))
    assert len(ordered) == len(nodes), "cycle in the rewritten graph"
    if ordered == nodes:
        return
    cursor = graph_root(graph)
    for node in ordered:
        cursor.append(node)
        cursor = node
