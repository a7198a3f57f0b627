"""`dmt-fx bench ...`: measurement commands.

  dmt-fx bench traffic [--topologies 2x2,2x4,4x2] [--variants ...] [--steps 3] [--format rich|json]
  dmt-fx bench emulated ...      (only when dmt_fx.bench.emulated is installed)

`add_parsers(verbs)` adds the `bench` verb to dmt_fx.cli.main's sub-parsers.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from dmt_fx.bench import traffic as bench
from dmt_fx.cli.tables import traffic_table


def add_parsers(verbs: Any) -> None:
    parser = verbs.add_parser("bench", help="measurements: exact traffic per rank per step, emulated networks")
    subs = parser.add_subparsers(dest="bench_verb", metavar="{traffic,emulated}")
    subs.required = True
    traffic = subs.add_parser("traffic", help="cross-host / intra-host bytes and messages per rank per step, "
                                              "flat baselines vs DMT, measured in real torchrun runs")
    traffic.add_argument("--topologies", default=",".join(bench.TOPOLOGIES),
                         help="comma-separated HOSTSxRANKS (default %(default)s)")
    traffic.add_argument("--variants", default=",".join(bench.VARIANTS), help="comma-separated (default: all)")
    traffic.add_argument("--target", default=bench.BENCH_TARGET,
                         help="model factory (default %(default)s: concat interaction, c = 2, 4, 8 exact)")
    traffic.add_argument("--steps", type=int, default=3, help="steps per variant (default 3)")
    traffic.add_argument("--warmup", type=int, default=1, help="left out of the means (default 1)")
    traffic.add_argument("--batch-size", type=int, default=32, help="local batch per rank (default 32)")
    traffic.add_argument("--out", default="results/traffic.json", help="JSON written here (default %(default)s)")
    traffic.add_argument("--format", choices=("rich", "json"), default="rich")
    traffic.set_defaults(run=_traffic)
    if importlib.util.find_spec("dmt_fx.bench.emulated") is not None:
        emulated = subs.add_parser("emulated", help="step times over emulated links (network namespaces)")
        try:
            importlib.import_module("dmt_fx.bench.emulated").add_arguments(emulated)
            emulated.add_argument("--format", choices=("rich", "json"), default="rich",
                                  help="json: print the JSON list of records to stdout")
        except Exception as exc:  # a broken optional module must not take every other verb down
            message = f"dmt-fx bench emulated: dmt_fx.bench.emulated failed to load: {type(exc).__name__}: {exc}"
            emulated.set_defaults(run=lambda args: _unavailable(message))
        else:
            emulated.set_defaults(run=_emulated)


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _traffic(args: argparse.Namespace) -> int:
    from dmt_fx.cli.run import _console

    console = _console()
    quiet = args.format == "json"
    start = time.monotonic()

    def announce(topology: str) -> None:
        if not quiet:
            console.print(f"[bold]{topology}[/]: launching {len(_split(args.variants))} variants ...")
        else:
            print(f"bench traffic: {topology} ...", file=sys.stderr, flush=True)

    work = args.out[:-5] if args.out.endswith(".json") else args.out + ".d"
    records = bench.traffic_bench(_split(args.topologies), _split(args.variants), target=args.target,
                                  steps=args.steps, warmup=args.warmup, batch_size=args.batch_size,
                                  out=work, on_topology=announce)
    bench.write_json(args.out, records)
    if quiet:
        print(json.dumps(records, indent=2))
        return 0
    console.print(traffic_table(records, f"traffic per rank per step (bytes sent, mean over ranks; fwd+bwd), "
                                               f"{args.target}, local batch {args.batch_size}, "
                                               f"{args.steps - args.warmup} measured steps"))
    console.print(f"step times: emulated hosts on one small machine, informative only. "
                  f"JSON: {args.out}; logs and per-rank files: {work}/ ({time.monotonic() - start:.0f} s)")
    return 0


def _unavailable(message: str) -> int:
    print(message, file=sys.stderr)
    return 2


def _emulated(args: argparse.Namespace) -> int:
    records = importlib.import_module("dmt_fx.bench.emulated").run(args)
    if getattr(args, "format", "rich") == "json":
        print(json.dumps(records, indent=2))
        return 0
    table = Table(title=f"emulated two-tier network, {args.topology}: median step time over {args.steps} steps")
    for column in ("variant", "median", "IQR", "best flat / variant", "x-host emb B", "x-host msgs"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for r in records:
        table.add_row(r["variant"], f"{r['step_time_median_s'] * 1000:.1f} ms", f"{r['step_time_iqr_s'] * 1000:.1f} ms",
                      f"{r.get('speedup_vs_best_flat', float('nan')):.2f}x", f"{r['cross_host_embedding_bytes']:.0f}",
                      f"{r['cross_host_messages']:.0f}")
    Console().print(table)
    Console().print(f"JSON and PNG in {args.out}/ (no delay emulation here: rate limits only)")
    return 0
