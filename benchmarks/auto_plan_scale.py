"""plan="auto" on a production-sized embedding layout: arithmetic only (the sites are built
by hand, no model is allocated), to see the choices where they matter.

26 tables of dim 128 (rows: 40M, 30M, 20M, 10M, 6 x 4M, 8 x 1M, 8 x 10k; 20 ids per bag),
local batch 2048, identity towers, the Topology's default links (450 / 50 GB/s).

  python benchmarks/auto_plan_scale.py 8x8 [--memory-per-rank 40e9]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dmt_fx.cli.auto_report import render_auto  # noqa: E402
from dmt_fx.cli.tables import console  # noqa: E402
from dmt_fx.compiler.auto_plan import AutoOptions, auto_plan  # noqa: E402
from dmt_fx.compiler.tower_modules import tower_module_kind  # noqa: E402
from dmt_fx.ir.sites import EmbeddingSite, Feature, InteractionSite, ModelSites, Table  # noqa: E402
from dmt_fx.ir.topology import Topology  # noqa: E402

ROWS = [40_000_000, 30_000_000, 20_000_000, 10_000_000] + [4_000_000] * 6 + [1_000_000] * 8 + [10_000] * 8
DIM, IDS_PER_BAG, BATCH = 128, 20.0, 2048


def sites() -> ModelSites:
    names = [f"f{i:02d}" for i in range(len(ROWS))]
    tables = tuple(Table(f"ebc.t{i}", f"ebc.t{i}.weight", r, DIM, 4) for i, r in enumerate(ROWS))
    features = tuple(Feature(n, f"ebc.t{i}", DIM, "sum", False, "ebc", n) for i, n in enumerate(names))
    return ModelSites("symbolic", (EmbeddingSite("ebc", "torchrec_ebc", "ebc", tuple(names), ""),), features,
                      tables, InteractionSite("", "none", None))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("topology")
    p.add_argument("--memory-per-rank", type=float, default=None)
    args = p.parse_args(argv)
    layout = sites()
    auto = auto_plan(layout, Topology.parse(args.topology), {f.name: IDS_PER_BAG for f in layout.features},
                     kind=tower_module_kind("identity"),
                     options=AutoOptions(memory_per_rank=None if args.memory_per_rank is None
                                         else int(args.memory_per_rank), batch_size=BATCH))
    render_auto(console(), auto.to_dict())


if __name__ == "__main__":
    main()
