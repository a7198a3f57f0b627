"""`dmt-fx bench ...`: measurement commands.

  dmt-fx bench traffic [--topologies 2x2,2x4,4x2] [--variants ...] [--steps 3] [--format rich|json]
  dmt-fx bench emulated [--topology 2x2] [--variants ...] [--format rich|json]    (root + iproute2)

Variant lists come from `dmt_fx.baselines.BASELINES` plus the DMT variants (dmt-identity,
dmt-c<N>: linear tower modules with compression N); NAME+fp16 / NAME+bf16 sends the pooled
embeddings through TorchRec's qcomms (the grammar: `dmt_fx.bench.variants`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rich.console import Console

from dmt_fx.bench import emulated
from dmt_fx.bench import traffic as bench
from dmt_fx.cli.options import add_towers_per_domain, positive_int
from dmt_fx.cli.tables import console, cpu_bound_note, emulated_table, traffic_table


def add_parser(verbs: Any) -> None:
    parser = verbs.add_parser("bench", help="measurements: exact traffic per rank per step, emulated networks")
    subs = parser.add_subparsers(dest="bench_verb", metavar="{traffic,emulated}")
    subs.required = True
    _add_traffic(subs)
    subparser = subs.add_parser("emulated", help="step times over emulated links (network namespaces)")
    emulated.add_arguments(subparser)
    subparser.add_argument("--format", choices=("rich", "json"), default="rich",
                           help="json: print the JSON list of records to stdout")
    subparser.set_defaults(run=run_emulated)


def _add_traffic(subs: Any) -> None:
    parser = subs.add_parser("traffic", help="cross-host / intra-host bytes and messages per rank per step, "
                                             "flat baselines vs DMT, measured in real torchrun runs")
    parser.add_argument("--topologies", default=",".join(bench.TOPOLOGIES),
                        help="comma-separated HOSTSxRANKS (default %(default)s)")
    parser.add_argument("--variants", default=",".join(bench.VARIANTS), help="comma-separated (default: all)")
    parser.add_argument("--ranks-per-host", type=positive_int, default=None, metavar="R",
                        help="torchrun hosts of R ranks: each topology's domains span several hosts (e.g. "
                             "--topologies 2x2 --ranks-per-host 1: 2 domains on 4 hosts); cross_domain_* fields")
    parser.add_argument("--target", default=bench.BENCH_TARGET,
                        help="model factory (default %(default)s: concat interaction, c = 2, 4, 8 exact; "
                             "dmt_fx.models.sequences:sequence_model: pooled + sequence features)")
    add_towers_per_domain(parser)
    parser.add_argument("--steps", type=int, default=3, help="steps per variant (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="left out of the means (default 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="local batch per rank (default 32)")
    parser.add_argument("--out", default="results/traffic.json", help="JSON written here (default %(default)s)")
    parser.add_argument("--format", choices=("rich", "json"), default="rich")
    parser.set_defaults(run=run_traffic)


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def run_traffic(args: argparse.Namespace) -> int:
    out, quiet, start = console(), args.format == "json", time.monotonic()

    def announce(topology: str) -> None:
        if quiet:
            print(f"bench traffic: {topology} ...", file=sys.stderr, flush=True)
        else:
            out.print(f"[bold]{topology}[/]: launching {len(_split(args.variants))} variants ...")

    work = args.out[:-5] if args.out.endswith(".json") else args.out + ".d"
    records = bench.traffic_bench(_split(args.topologies), _split(args.variants), target=args.target,
                                  steps=args.steps, warmup=args.warmup, batch_size=args.batch_size,
                                  out=work, on_topology=announce, ranks_per_host=args.ranks_per_host,
                                  towers_per_domain=args.towers_per_domain)
    bench.write_json(args.out, records)
    if quiet:
        print(json.dumps(records, indent=2))
        return 0
    render_traffic(out, records, args)
    out.print(f"step times: emulated hosts on one small machine, informative only. "
              f"JSON: {args.out}; logs and per-rank files: {work}/ ({time.monotonic() - start:.0f} s)")
    return 0


def render_traffic(out: Console, records: list[dict[str, Any]], args: argparse.Namespace) -> None:
    out.print(traffic_table(records, f"traffic per rank per step (bytes sent, mean over ranks; fwd+bwd), "
                                     f"{args.target}, local batch {args.batch_size}, "
                                     f"{args.steps - args.warmup} measured steps"))


def run_emulated(args: argparse.Namespace) -> int:
    records = emulated.run(args)
    if args.format == "json":
        print(json.dumps(records, indent=2))
        return 0
    render_emulated(console(), records, args)
    return 0


def render_emulated(out: Console, records: list[dict[str, Any]], args: argparse.Namespace) -> None:
    out.print(emulated_table(emulated.labelled(records), f"emulated two-tier network, {args.topology}: median step time over "
                                      f"{args.steps} steps"))
    note = cpu_bound_note(records)
    if note:
        out.print(note)
    out.print(f"JSON and PNG in {args.out}/ (no delay emulation here: rate limits only)")
