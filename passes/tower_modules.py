"""Insert one tower module per tower, between its lookups and its peer output exchange.

Algorithm:
  1. Find each tower's `peer_output_exchange` node (inserted by the SPTT pass).
  2. Register the tower's module under `dmt_tower_modules.tower_<t>` and call it on the
     tower's lookup outputs.
  3. The exchange then sends the module's outputs across hosts.
The default identity module preserves numerics; compressing modules change the model and
are opt-in.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch.fx as fx
import torch.nn as nn

from dmt_fx.ir.graph import tag
from dmt_fx.ir.names import Role, nodes_with_role, tower_module_path
from dmt_fx.ir.plan import Tower, TowerPlan

log = logging.getLogger(__name__)
PASS = "tower_modules"


def tower_modules_pass(gm: fx.GraphModule, *, plan: TowerPlan,
                       make_module: Callable[[Tower], nn.Module]) -> fx.GraphModule:
    # Step 1
    exchanges = list(nodes_with_role(gm.graph, Role.PEER_OUTPUT_EXCHANGE))
    if not exchanges:
        return gm
    towers = {t.index: t for t in plan.towers}
    for exchange in exchanges:
        tower = towers[exchange.kwargs["tower"]]
        # Step 2
        path = tower_module_path(tower.index)
        gm.add_submodule(path, make_module(tower))
        with gm.graph.inserting_before(exchange):
            module_node = gm.graph.call_module(path, tuple(exchange.args[0]))
        tag(module_node, PASS, Role.TOWER_MODULE, tower=tower.index, host=tower.host,
            features=tower.features)
        # Step 3
        exchange.args = (module_node,)
    log.info("tower_modules: inserted %d tower modules", len(exchanges))
    return gm
