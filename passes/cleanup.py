"""Remove dead nodes (e.g. unused shape reads left by tracing).

Submodules are kept: their parameters belong to the model's state_dict even when unused."""

from __future__ import annotations

import torch.fx as fx


def cleanup_pass(gm: fx.GraphModule) -> fx.GraphModule:
    gm.graph.eliminate_dead_code()
    return gm
