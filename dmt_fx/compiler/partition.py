"""Old location of the partitioners, kept so existing imports work: they now live in
`dmt_fx.compiler.partitioners` (one file each, registry `PARTITIONERS`)."""

from __future__ import annotations

from dmt_fx.compiler.partitioners import PARTITIONERS, make_partition, register_partitioner
from dmt_fx.compiler.partitioners.balanced import balanced_plan
from dmt_fx.compiler.partitioners.learned import DEFAULT_BALANCE_SLACK, learned_plan
from dmt_fx.compiler.partitioners.random import random_plan
from dmt_fx.compiler.partitioners.units import balance_bound, table_units

__all__ = ["DEFAULT_BALANCE_SLACK", "PARTITIONERS", "balance_bound", "balanced_plan", "learned_plan",
           "make_partition", "random_plan", "register_partitioner", "table_units"]
