"""`dmt-fx plan TARGET --topology 2x4 [--format rich|json]`: towers, loads, collectives with bytes/step.

`--format json` adds the plan itself (`.plan`), which `--plan FILE` and
`dmt_fx.transform(..., plan=)` take back.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console

from dmt_fx.cli.options import add_transform_options, positive_int, transform_target
from dmt_fx.cli.report import plan_report
from dmt_fx.cli.tables import collectives_table, console, plan_extras, towers_table
from dmt_fx.ir.result import dmt_result


def add_parser(verbs: Any) -> None:
    parser = verbs.add_parser("plan", help="the tower plan and its estimated cross-host traffic")
    add_transform_options(parser)
    parser.add_argument("--batch-size", type=positive_int, default=512,
                        help="local batch size per rank for the traffic estimate (default 512)")
    parser.set_defaults(run=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    _, gm = transform_target(args)
    data = plan_report(gm, batch_size=args.batch_size)
    if args.format == "json":
        data["plan"] = dmt_result(gm).plan.to_dict()
        print(json.dumps(data, indent=2))
        return 0
    render(console(), data, target=args.target, tower_module=args.tower_module, compression=args.compression)
    return 0


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
