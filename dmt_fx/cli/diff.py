"""`dmt-fx diff TARGET --topology 2x4 [--format rich|json]`: original and rewritten graphs side by side."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console

from dmt_fx.cli.options import add_transform_options, transform_target
from dmt_fx.cli.report import graph_diff
from dmt_fx.cli.tables import console, node_table, side_by_side
from dmt_fx.ir.result import dmt_result


def add_parser(verbs: Any) -> None:
    parser = verbs.add_parser("diff", help="the original and rewritten graphs side by side")
    add_transform_options(parser)
    parser.set_defaults(run=run_diff)


def run_diff(args: argparse.Namespace) -> int:
    original, gm = transform_target(args, keep_original=True)
    data = graph_diff(original, gm)
    if args.format == "json":
        print(json.dumps(data, indent=2))
        return 0
    result = dmt_result(gm)
    header = f"[bold]{args.target}[/] on topology {result.topology} ({result.route} capture)"
    render(console(), data, header=header, hosts={t.index: t.host for t in result.plan.towers})
    return 0


def render(out: Console, data: dict[str, Any], *, header: str, hosts: dict[int, int]) -> None:
    """The diff of `graph_diff`: counts, both graphs side by side, the inserted nodes per tower."""
    out.print(f"{header}: [green]{data['inserted']} nodes inserted[/], [red]{data['removed']} removed[/]")
    out.print(side_by_side(data["original"], data["rewritten"]))
    rows = {r["name"]: r for r in data["rewritten"]}
    for tower, names in data["towers"].items():
        out.print(node_table(f"tower {tower} (host {hosts.get(int(tower), '?')})", [rows[n] for n in names]))
    if data["shared"]:
        out.print(node_table("shared (all towers)", [rows[n] for n in data["shared"]]))
