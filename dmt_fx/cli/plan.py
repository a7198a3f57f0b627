"""`dmt-fx plan TARGET --topology 2x4 [--format rich|json]`: towers, loads, collectives with bytes/step.

`--format json` adds the plan itself (`.plan`), which `--plan FILE` and
`dmt_fx.transform(..., plan=)` take back. `--auto [--link-bandwidths INTRA,INTER]
[--memory-per-rank B] [--quality-budget Q] [--cost-params FILE]` lets the cost model choose towers (k per host:
1, 2, ..., or only `--towers-per-domain K`), compression and each host's sharding
(plan="auto", kept in the plan's towers) and explains the choice (`.auto` in JSON).
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from rich.console import Console

from dmt_fx.cli.auto_report import render_auto
from dmt_fx.cli.options import add_transform_options, positive_int, transform_target
from dmt_fx.cli.report import plan_report
from dmt_fx.cli.tables import collectives_table, console, plan_extras, towers_table
from dmt_fx.compiler.auto_plan import DEFAULT_QUALITY_BUDGET, AutoOptions
from dmt_fx.compiler.transform import transform
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.result import dmt_result
from dmt_fx.ir.topology import Topology
from dmt_fx.jobs.target import load_target

_SIZE = re.compile(r"^\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def add_parser(verbs: Any) -> None:
    parser = verbs.add_parser("plan", help="the tower plan and its estimated cross-host traffic")
    add_transform_options(parser)
    parser.add_argument("--batch-size", type=positive_int, default=512,
                        help="local batch size per rank for the traffic estimate (default 512)")
    parser.add_argument("--auto", action="store_true",
                        help="let the cost model choose the towers, the compression (with a compressing "
                             "--tower-module) and each tower's sharding, and explain the choice")
    parser.add_argument("--link-bandwidths", metavar="INTRA,INTER", type=link_bandwidths, default=None,
                        help="with --auto: intra-host and inter-host GB/s per rank (default 450,50)")
    parser.add_argument("--memory-per-rank", metavar="B", type=memory_size, default=None,
                        help="with --auto: bytes of tables a rank may hold, e.g. 40GB or 512MiB (default: no limit)")
    parser.add_argument("--quality-budget", metavar="Q", type=float, default=DEFAULT_QUALITY_BUDGET,
                        help="with --auto: share of pairwise affinity a compressing plan keeps inside towers "
                             f"(default {DEFAULT_QUALITY_BUDGET})")
    parser.add_argument("--cost-params", metavar="FILE", default=None,
                        help="with --auto: the step model's fitted parameters (benchmarks/cost_sweep.py "
                             "--save-params); default: the model at face value")
    parser.set_defaults(run=run_plan)


def link_bandwidths(text: str) -> tuple[float, float]:
    """argparse type: 'INTRA,INTER' in GB/s."""
    try:
        intra, inter = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected INTRA,INTER in GB/s such as 450,50, got {text!r}") from None
    if intra <= 0 or inter <= 0:
        raise argparse.ArgumentTypeError(f"bandwidths must be > 0 GB/s, got {text!r}")
    return intra, inter


def memory_size(text: str) -> int:
    """argparse type: bytes, with an optional k/M/G/T (powers of 1000) or KiB/MiB/GiB/TiB suffix."""
    match = _SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected bytes such as 40GB, 512MiB or 4e10, got {text!r}")
    number, prefix, binary = match.groups()
    scale = (1024 if binary else 1000) ** " kmgt".index(prefix.lower() or " ")
    value = int(float(number) * scale)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {text!r}")
    return value


def run_plan(args: argparse.Namespace) -> int:
    gm = auto_target(args) if args.auto else transform_target(args)[1]
    data = plan_report(gm, batch_size=args.batch_size)
    auto = gm.meta.get("dmt_auto")
    if auto is not None:
        data["auto"] = auto.to_dict()
    if args.format == "json":
        data["plan"] = dmt_result(gm).plan.to_dict()
        print(json.dumps(data, indent=2))
        return 0
    out = console()
    render(out, data, target=args.target, tower_module=auto.tower_module if auto else args.tower_module,
           compression=auto.compression if auto else args.compression)
    if auto is not None:
        render_auto(out, data["auto"])
    return 0


def auto_target(args: argparse.Namespace):
    """TARGET transformed with plan="auto" under the --auto options."""
    if args.plan:
        raise DMTError("both --plan and --auto", "one of them", ["drop --plan to let --auto choose",
                                                                  "or drop --auto to use your plan"])
    links = {}
    if args.link_bandwidths:
        links = {"intra_host_bandwidth_gbps": args.link_bandwidths[0],
                 "inter_host_bandwidth_gbps": args.link_bandwidths[1]}
    if getattr(args, "ranks_per_host", None):
        links["ranks_per_host"] = args.ranks_per_host
    topology = Topology.parse(args.topology, **links)  # before the (slow) model build: fail fast
    options = AutoOptions(memory_per_rank=args.memory_per_rank, quality_budget=args.quality_budget,
                          batch_size=args.batch_size, cost_params=getattr(args, "cost_params", None))
    model, inputs = load_target(args.target)
    return transform(model, topology, example_inputs=inputs, plan=options, tower_module=args.tower_module,
                     seed=args.seed, towers_per_domain=getattr(args, "towers_per_domain", 1))  # k > 1: only that k


def render(out: Console, data: dict[str, Any], *, target: str, tower_module: str, compression: int) -> None:
    """The report of `plan_report`: header, towers, collectives, balance."""
    out.print(f"[bold]{target}[/] on topology {data['topology']} ({data['route']} capture), "
              f"partitioner {data['partitioner']}, interaction {data['interaction']['node']} "
              f"({data['interaction']['kind']})")
    if data["changes_model"]:
        out.print(f"tower modules: {tower_module}, compression {compression} "
                  "(this changes the model: it must be trained)")
    out.print(towers_table(data["towers"]))
    for extra in plan_extras(data):  # composite embeddings, joint tables split by field, warnings
        out.print(extra)
    out.print(collectives_table(data["collectives"], data["batch_size"]))
    bound = "none" if data["balance_bound"] is None else f"{data['balance_bound']:g}"
    out.print(f"lookup imbalance {data['lookup_imbalance']:g}, memory imbalance "
              f"{data['memory_imbalance']:g} (max / mean; bound {bound}); fingerprint {data['fingerprint']}")
