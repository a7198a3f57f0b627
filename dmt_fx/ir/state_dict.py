"""Checkpoint keys: the rewritten model's state dict speaks the original model's keys.

The compiler records which module paths of the DMT model came from which paths of the
original (`DMTResult.renames`); the hooks here translate in both directions, for the
logical model and for the runtime's per-rank module alike.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch.fx as fx
import torch.nn as nn


class KeyRenamer:
    """State-dict hook: tower-module paths <-> the original model's paths.

    As a post-hook of `state_dict` it writes original keys (in the original's order); as a
    pre-hook of `load_state_dict` it reads them. A callable object, so torch can tag it."""

    def __init__(self, table: Mapping[str, str], order: Sequence[str] = ()) -> None:
        self.table = dict(table)
        self.order = {k: i for i, k in enumerate(order)}

    def rename(self, key: str, prefix: str) -> str:
        """The longest mapped path wins: a whole key (a table that is one parameter of a module
        holding several, e.g. a quotient-remainder bag's `weight_q`), else a module path (a
        tower module maps with its children)."""
        if not key.startswith(prefix):
            return key
        parts = key[len(prefix):].split(".")
        for cut in range(len(parts), 0, -1):
            path = ".".join(parts[:cut])
            if path in self.table:
                return prefix + ".".join([self.table[path], *parts[cut:]])
        return key

    def __call__(self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *rest: Any) -> None:
        # Only this module's keys (those under `prefix`) are renamed and reordered; a parent's
        # other entries keep their places in front.
        others = [(k, v) for k, v in state_dict.items() if not k.startswith(prefix)]
        mine = [(self.rename(k, prefix), v) for k, v in state_dict.items() if k.startswith(prefix)]
        if self.order:
            mine.sort(key=lambda kv: self.order.get(kv[0][len(prefix):], len(self.order)))
        state_dict.clear()
        state_dict.update(others + mine)


def install_state_dict_hooks(gm: fx.GraphModule, renames: Mapping[str, str], order: Sequence[str]) -> None:
    gm.register_state_dict_post_hook(KeyRenamer(renames, order))
    gm.register_load_state_dict_pre_hook(KeyRenamer({v: k for k, v in renames.items()}))
