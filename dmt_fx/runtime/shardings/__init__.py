"""Intra-host shardings, one file each; `SHARDINGS` is their registry.

Every module of this package is imported here, so a sharding added as a new file that calls
`register_sharding` is available to `distribute(..., sharding=)` and to `--sharding`.
"""

from __future__ import annotations

import importlib
import pkgutil

from dmt_fx.runtime.shardings.base import SHARDINGS, HostRanks, ShardingFn, host_sharding_plan, register_sharding

__all__ = ["SHARDINGS", "HostRanks", "ShardingFn", "host_sharding_plan", "register_sharding"]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
