"""Partitioners, one file each; `PARTITIONERS` is the registry (see base.py).

Add one with `register_partitioner(name, fn)` from your code, or as a new file here (it is
imported below with the others). units.py and search.py hold what the built-ins share."""

from __future__ import annotations

from dmt_fx.compiler.partitioners.base import (
    PARTITIONERS,
    Partitioner,
    PartitionRequest,
    make_partition,
    register_partitioner,
    run_partitioner,
)
from dmt_fx.compiler.plugins import import_all

__all__ = ["PARTITIONERS", "PartitionRequest", "Partitioner", "make_partition", "register_partitioner",
           "run_partitioner"]

import_all(__name__, __path__)
