"""Tables on TorchRec's DENSE kernel (Adam on the CPU) and checkpoints of their optimizer state.

FBGEMM's CPU build fuses SGD and Adagrad into its backward but not Adam, so for Adam on the
CPU the runtime shards the tables with the DENSE kernel (`optim.table_kernel`): each rank's
shards are parameters with autograd gradients, and the dense torch.optim.Adam steps them.
Its per-element state (exp_avg, exp_avg_sq) then lives in plain tensors, one per local
shard, under the same key on every rank that holds part of a table. DCP would keep one
rank's tensor per key, so `TableStateOptimizer.state_dict()` shows each such state tensor
as a ShardedTensor laid out like its table (the layout of the table's own ShardedTensor),
which DCP saves from every rank and loads in place; `load_state_dict` unwraps them again.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer

from dmt_fx._compat import Shard, ShardedTensor, sharded_from_local_shards, sharded_group
from dmt_fx.ir.errors import DMTError


def table_layouts(lookups: Iterable[nn.Module], named: Mapping[str, torch.Tensor]) -> dict[str, ShardedTensor]:
    """Optimizer key -> the ShardedTensor of the table that parameter holds this rank's part of.

    `named`: the optimizer's keys and parameters. A rank without a shard of a table still
    has a (zero-size) parameter for it, and its state must say "no shard here" too."""
    layouts = {}
    for lookup in lookups:
        mine = {id(p) for p in lookup.parameters()}
        tables = {name: value for name, value in lookup.state_dict().items() if isinstance(value, ShardedTensor)}
        for key, param in named.items():
            if id(param) not in mine:
                continue
            table = next((t for name, t in tables.items() if key == name or key.endswith("." + name)), None)
            if table is None:
                continue
            if len(table.local_shards()) > 1:
                raise DMTError(f"table {key!r} with {len(table.local_shards())} shards on one rank on TorchRec's "
                               "DENSE kernel", "at most one shard of a table per rank for a dense optimizer's state",
                               ["use table_wise or row_wise inside the host with Adam on the CPU",
                                "or use SGD or Adagrad (fused on the CPU)"])
            layouts[key] = table
    return layouts


def _as_sharded(layout: ShardedTensor, value: Any) -> Any:
    shards = layout.local_shards()
    if not torch.is_tensor(value) or value.dim() == 0:
        return value  # e.g. Adam's step count: one scalar, equal on every rank
    local = [Shard(value, shards[0].metadata)] if shards else []  # no shard here: nothing to save
    return sharded_from_local_shards(local, layout.metadata(), process_group=sharded_group(layout))


def _local(value: Any, current: Any) -> Any:
    if not isinstance(value, ShardedTensor):
        return value
    return value.local_shards()[0].tensor if value.local_shards() else current


class TableStateOptimizer(CombinedOptimizer):
    """A CombinedOptimizer whose checkpoints hold the state of DENSE-kernel table shards as
    ShardedTensors (module docstring)."""

    def __init__(self, optims: list[tuple[str, KeyedOptimizer]], lookups: Iterable[nn.Module]) -> None:
        super().__init__(optims)
        self._layouts = table_layouts(lookups, self.params)

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        for key, layout in self._layouts.items():
            if key in out["state"]:
                out["state"][key] = {n: _as_sharded(layout, v) for n, v in out["state"][key].items()}
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        live = super().state_dict()["state"]
        state = {key: {n: _local(v, live.get(key, {}).get(n)) for n, v in entries.items()}
                 for key, entries in state_dict["state"].items()}
        super().load_state_dict({**state_dict, "state": state})
