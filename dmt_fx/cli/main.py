"""`dmt-fx`: inspect what the compiler does to a model, from the shell.

  dmt-fx diff TARGET --topology 2x4 [--format rich|json] [--plan FILE]
  dmt-fx plan TARGET --topology 2x4 [--format rich|json] [--batch-size N] [--plan FILE]
  dmt-fx run [TARGET] --topology 2x2 --steps N [--baseline NAME]     (see cli_run.py)
  dmt-fx demo [TARGET] [--topology 2x2] [--steps 300]                (the main job)
  dmt-fx bench traffic | emulated [--format json]                     (see cli_bench.py)

TARGET is `pkg.module:factory` or `path/to/file.py:factory`. User errors (bad target,
topology, plan, model) print one `dmt-fx: error:` message and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from dmt_fx.cli.bench import add_parsers as add_bench_parsers
from dmt_fx.cli.report import graph_diff, human_bytes, original_graph, plan_report
from dmt_fx.cli.run import add_parsers as add_run_parsers
from dmt_fx.cli.tables import side_by_side
from dmt_fx.compiler.partition import PARTITIONERS
from dmt_fx.compiler.tower_module import KINDS
from dmt_fx.compiler.transform import transform
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.result import dmt_result
from dmt_fx.ir.topology import Topology
from dmt_fx.jobs.target import load_target

EXIT_USER_ERROR = 2
_PIPE_WIDTH = 160  # rich's 80 columns squeeze the side-by-side diff when piped


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except DMTError as err:
        print(f"dmt-fx: error: {' '.join(err.one_line().split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmt-fx", description="Inspect the DMT rewrite of a recommendation model.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    diff = verbs.add_parser("diff", help="the original and rewritten graphs side by side")
    _common(diff)
    diff.set_defaults(run=_diff)
    plan = verbs.add_parser("plan", help="the tower plan and its estimated cross-host traffic")
    _common(plan)
    plan.add_argument("--batch-size", type=_positive_int, default=512,
                      help="local batch size per rank for the traffic estimate (default 512)")
    plan.set_defaults(run=_plan)
    add_run_parsers(verbs)
    add_bench_parsers(verbs)
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="TARGET", help="pkg.module:factory or path/to/file.py:factory")
    parser.add_argument("--topology", required=True, help="HOSTSxRANKS_PER_HOST, e.g. 2x4")
    parser.add_argument("--format", choices=("rich", "json"), default="rich", help="output format (default rich)")
    parser.add_argument("--plan", metavar="FILE", help="a JSON tower plan (from `dmt-fx plan --format json | jq .plan`)")
    parser.add_argument("--partitioner", choices=PARTITIONERS, default="balanced",
                        help="how towers are chosen without --plan (default balanced; learned wants a "
                             "trained model from TARGET)")
    parser.add_argument("--tower-module", choices=KINDS, default="identity",
                        help="per-tower module (default identity: the model is unchanged)")
    parser.add_argument("--compression", type=_positive_int, default=1,
                        help="with a compressing --tower-module: divide each tower's cross-host width by this")
    parser.add_argument("--seed", type=int, default=0, help="seed of the learned / random partitioner")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _transform(args: argparse.Namespace, keep_original: bool = False):
    topology = Topology.parse(args.topology)  # before the (slow) model build: fail fast
    model, inputs = load_target(args.target)
    original = original_graph(model, inputs) if keep_original else None
    gm = transform(model, topology, example_inputs=inputs, plan=args.plan, partitioner=args.partitioner,
                   tower_module=args.tower_module, compression=args.compression, seed=args.seed)
    return original, gm


def _console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=_PIPE_WIDTH)


# ---------------------------------------------------------------- diff


def _diff(args: argparse.Namespace) -> int:
    original, gm = _transform(args, keep_original=True)
    data = graph_diff(original, gm)
    if args.format == "json":
        print(json.dumps(data, indent=2))
        return 0
    console = _console()
    result = dmt_result(gm)
    console.print(f"[bold]{args.target}[/] on topology {result.topology} ({result.route} capture): "
                  f"[green]{data['inserted']} nodes inserted[/], [red]{data['removed']} removed[/]")
    console.print(side_by_side(data["original"], data["rewritten"]))
    rows = {r["name"]: r for r in data["rewritten"]}
    hosts = {t.index: t.host for t in result.plan.towers}
    for tower, names in data["towers"].items():
        title = f"tower {tower} (host {hosts.get(int(tower), '?')})"
        console.print(_node_table(title, [rows[n] for n in names]))
    if data["shared"]:
        console.print(_node_table("shared (all towers)", [rows[n] for n in data["shared"]]))
    return 0


def _node_table(title: str, rows: list[dict]) -> Table:
    table = Table(title=title, title_justify="left")
    for header in ("node", "role", "target", "args"):
        table.add_column(header, overflow="fold")
    for r in rows:
        table.add_row(Text(r["name"], style="green"), r["role"] or "", r["target"], r["args"])
    return table


# ---------------------------------------------------------------- plan


def _plan(args: argparse.Namespace) -> int:
    _, gm = _transform(args)
    data = plan_report(gm, batch_size=args.batch_size)
    if args.format == "json":
        data["plan"] = dmt_result(gm).plan.to_dict()
        print(json.dumps(data, indent=2))
        return 0
    console = _console()
    console.print(f"[bold]{args.target}[/] on topology {data['topology']} ({data['route']} capture), "
                  f"partitioner {data['partitioner']}, interaction {data['interaction']['node']} "
                  f"({data['interaction']['kind']})")
    if data["changes_model"]:
        console.print(f"tower modules: {args.tower_module}, compression {args.compression} "
                      "(this changes the model: it must be trained)")
    console.print(_towers_table(data["towers"]))
    console.print(_collectives_table(data["collectives"], data["batch_size"]))
    bound = "none" if data["balance_bound"] is None else f"{data['balance_bound']:g}"
    console.print(f"lookup imbalance {data['lookup_imbalance']:g}, memory imbalance "
                  f"{data['memory_imbalance']:g} (max / mean; bound {bound}); fingerprint {data['fingerprint']}")
    return 0


def _towers_table(towers: list[dict[str, Any]]) -> Table:
    table = Table(title="towers", title_justify="left")
    for header in ("tower", "host", "features", "tables", "lookup cost (B/sample)", "memory"):
        table.add_column(header, overflow="fold", justify="right" if header in ("tower", "host") else "left")
    for t in towers:
        tables = ", ".join(name.rpartition(".")[2] for name in t["tables"])
        table.add_row(str(t["tower"]), str(t["host"]), ", ".join(t["features"]), tables,
                      f"{t['lookup_cost']:g}", human_bytes(t["memory_bytes"]))
    return table


def _collectives_table(collectives: list[dict[str, Any]], batch_size: int) -> Table:
    table = Table(title=f"collectives (estimated bytes per step per rank, local batch {batch_size})",
                  title_justify="left")
    for header in ("node", "kind", "tower", "group", "direction", "bytes/step"):
        table.add_column(header, overflow="fold")
    for c in collectives:
        table.add_row(c["name"], c["kind"], str(c["tower"]), c["group"], c["direction"],
                      human_bytes(c["bytes_per_step"]))
    return table


if __name__ == "__main__":
    sys.exit(main())
