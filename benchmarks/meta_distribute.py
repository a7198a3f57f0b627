"""A meta-device DLRM on a 2x2 torchrun world: what each rank allocates.

torchrec's DLRM with every table and layer on the meta device (default 26 tables of
1,000,000 x 64, 6.66 GB fp32), transformed, distributed, trained 3 steps and checkpointed
(DCP; --no-checkpoint skips it) by tests/harness/meta_job.py on every rank. Per rank: its own shards' bytes (the
ShardedTensors' local shard sizes), the bytes its sharded table modules hold, its RSS before
`distribute`, its peak RSS after distribute, after training and after the checkpoint.

  python benchmarks/meta_distribute.py --rows 1000000 --out /tmp/meta   # OUT/meta_distribute.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from dmt_fx import Topology
from dmt_fx.jobs.launch import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=26)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--topology", default="2x2")
    parser.add_argument("--out", default="results/meta_distribute")
    parser.add_argument("--no-checkpoint", action="store_true",
                        help="skip the DCP save (it stages a copy of each rank's shards: twice the memory)")
    args = parser.parse_args()
    if args.no_checkpoint:
        os.environ["DMT_FX_META_CHECKPOINT"] = "0"
    os.environ["DMT_FX_META_MODEL"] = f"tables={args.tables},rows={args.rows},dim={args.dim}"
    os.chdir(ROOT)  # torchrun's workers import tests.harness.meta_job from the repository root
    result = launch(Topology.parse(args.topology), ["meta_dlrm", args.topology, args.out], args.out,
                    deadline_s=1800, module="tests.harness.meta_job")
    if not result.ok:
        sys.exit(result.log_tail(60))
    world = Topology.parse(args.topology).world_size
    ranks = [json.load(open(os.path.join(args.out, "meta_dlrm", f"rank{r}.json"))) for r in range(world)]
    mb = 1e6
    print(f"model tables: {ranks[0]['model_table_bytes'] / mb:,.0f} MB on {args.topology}")
    print("rank | own shards MB | table bytes held MB | RSS before MB | peak after distribute | train | checkpoint")
    for r in ranks:
        p = r["peak_rss_kb_after"]
        print(f"{r['rank']} | {r['own_shard_bytes'] / mb:,.0f} | {r['allocated_table_bytes'] / mb:,.0f} | "
              f"{r['rss_before_distribute_kb'] * 1e3 / mb:,.0f} | {p['distribute'] * 1e3 / mb:,.0f} | "
              f"{p['train'] * 1e3 / mb:,.0f} | {p['checkpoint'] * 1e3 / mb:,.0f}")
    with open(os.path.join(args.out, "meta_distribute.json"), "w") as handle:
        json.dump({"tables": args.tables, "rows": args.rows, "dim": args.dim, "topology": args.topology,
                   "seconds": result.seconds, "ranks": ranks}, handle, indent=2)


if __name__ == "__main__":
    main()
