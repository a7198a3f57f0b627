"""`dmt-fx run` and `dmt-fx demo`: distributed training from the shell.

  dmt-fx run [TARGET] --topology 2x2 --steps N [--baseline NAME] [--batch-size B]
  dmt-fx demo [TARGET] [--topology 2x2] [--steps 300]        (the README's main job)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dmt_fx.cli.report import graph_diff, human_bytes, original_graph
from dmt_fx.cli.tables import side_by_side
from dmt_fx.compiler.transform import transform
from dmt_fx.ir.result import dmt_result
from dmt_fx.ir.topology import Topology
from dmt_fx.jobs.runs import RunSpec, run_many
from dmt_fx.jobs.target import load_target, target_module
from dmt_fx.models.zoo import DEFAULT_TARGET

FLAT = ("flat-table_wise", "flat-row_wise", "flat-table_row_wise")


def add_parsers(verbs: Any) -> None:
    run = verbs.add_parser("run", help="train DMT and a flat TorchRec baseline through torchrun, side by side")
    _common(run, steps=50)
    run.add_argument("--baseline", default="flat-table_wise",
                     help="flat-table_wise | flat-row_wise | flat-table_row_wise | torchrec-towers | none")
    run.add_argument("--tower-module", default="identity", choices=("identity", "linear", "dot", "dcn"),
                     help="DMT tower modules (anything but identity changes the model)")
    run.add_argument("--compression", type=int, default=1, help="c: tower outputs are 1/c as wide")
    run.set_defaults(run=_run)
    demo = verbs.add_parser("demo", help="the main job: transform, verify, train DMT and every flat plan")
    _common(demo, steps=300)
    demo.set_defaults(run=_demo)


def _common(parser: argparse.ArgumentParser, steps: int) -> None:
    parser.add_argument("target", metavar="TARGET", nargs="?", default=DEFAULT_TARGET,
                        help=f"pkg.module:factory or path/to/file.py:factory (default {DEFAULT_TARGET})")
    parser.add_argument("--topology", default="2x2", help="HOSTSxRANKS_PER_HOST emulated on this machine")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch-size", type=int, default=32, help="local batch per rank")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--optimizer", choices=("sgd", "adagrad", "adam"), default="adagrad",
                        help="dense optimizer, fused into the tables by TorchRec (default adagrad)")
    parser.add_argument("--out", default="results/run", help="logs, per-rank JSON and summary.json")
    parser.add_argument("--format", choices=("rich", "json"), default="rich")


def _spec(args: argparse.Namespace) -> RunSpec:
    extra = ("--tower-module", args.tower_module, "--compression", str(args.compression)) \
        if getattr(args, "tower_module", "identity") != "identity" else ()
    return RunSpec(args.target, Topology.parse(args.topology), args.steps, args.batch_size, args.lr,
                   args.optimizer, args.out, extra)


def _train(args: argparse.Namespace, variants: list[str], console: Console) -> list[dict]:
    spec = _spec(args)
    with Progress(TextColumn("{task.description:>20}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, disable=args.format == "json") as bar:
        def progress(variant: str, path: str):
            task = bar.add_task(variant, total=spec.steps)

            def poll() -> None:
                try:
                    with open(path) as handle:
                        bar.update(task, completed=int(handle.read().split()[0]))
                except (OSError, ValueError, IndexError):
                    pass
            return poll
        rows = run_many(spec, variants, progress)
    os.makedirs(spec.out, exist_ok=True)
    with open(os.path.join(spec.out, "summary.json"), "w") as handle:
        json.dump(rows, handle, indent=2)
    return rows


def _console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=140)  # piped: keep tables readable


def _run(args: argparse.Namespace) -> int:
    console = _console()
    variants = ["dmt"] + ([] if args.baseline == "none" else [args.baseline])
    rows = _train(args, variants, console)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        console.print(results_table(rows, f"{args.target} on {args.topology}, {args.steps} steps"))
        console.print(f"per-rank results, logs and summary.json in {args.out}/")
    return 0


def _demo(args: argparse.Namespace) -> int:
    console = _console()
    topology = Topology.parse(args.topology)
    model, inputs = load_target(args.target)
    original = original_graph(model, inputs)
    gm = transform(copy.deepcopy(model), topology, example_inputs=inputs)
    _print_rewrite(console, gm, original)
    _print_equivalence(console, args.target, model, topology, inputs)
    rows = _train(args, ["dmt", *FLAT], console)
    best = min((r for r in rows if r["variant"] in FLAT), key=lambda r: r["step_time_median_s"])
    console.print(results_table(rows, f"DMT vs TorchRec flat plans: {args.target} on {args.topology} "
                                      f"(emulated hosts), {args.steps} steps", best=best["variant"]))
    dmt = rows[0]
    console.print(f"DMT step time / best flat ({best['variant']}): "
                  f"{dmt['step_time_median_s'] / best['step_time_median_s']:.2f}x; cross-host messages per step: "
                  f"{dmt['cross_host_messages']:.0f} vs {best['cross_host_messages']:.0f}. On one 2-core machine the "
                  "emulated hosts share a loopback link, so step times show overheads, not the network win "
                  "(see README, Performance).")
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    return 0


def _print_rewrite(console: Console, gm, original) -> None:
    diff = graph_diff(original, gm)
    console.print(f"graph diff: {diff['inserted']} nodes inserted (green), {diff['removed']} removed (red)")
    console.print(side_by_side(diff["original"], diff["rewritten"]))
    result = dmt_result(gm)
    table = Table(title=f"tower plan ({result.plan.partitioner}, {result.topology})")
    for column in ("tower", "host", "features", "lookup cost", "memory"):
        table.add_column(column)
    for t in result.plan.towers:
        table.add_row(str(t.index), str(t.host), ", ".join(t.features), f"{t.lookup_cost:.0f}", f"{t.memory_bytes / 1024:.0f} KiB")
    console.print(table)
    roles: dict[str, int] = {}
    for node in gm.graph.nodes:
        role = node.meta.get("dmt", {}).get("role")
        if role:
            roles[role] = roles.get(role, 0) + 1
    console.print("rewrite: " + ", ".join(f"{n} {r}" for r, n in roles.items()) +
                  " (`dmt-fx diff` also lists the inserted nodes per tower)")


def _print_equivalence(console: Console, target: str, model, topology: Topology, inputs) -> None:
    """One process: outputs and gradients of the DMT model against the original, fresh batches."""
    module, _ = target_module(target)
    make = getattr(module, "make_inputs", None)
    batches = [make(16, 100 + i) for i in range(3)] if make else [inputs]
    reference, dmt_model = copy.deepcopy(model), copy.deepcopy(model)
    gm = transform(dmt_model, topology, example_inputs=inputs)
    worst_out = worst_grad = 0.0
    for batch in batches:
        expected, got = reference(*batch), gm(*batch)
        worst_out = max(worst_out, (expected - got).abs().max().item())
        reference.zero_grad(), gm.zero_grad()
        expected.sum().backward(), got.sum().backward()
        grads = {k: v.grad for k, v in gm.state_dict(keep_vars=True).items() if getattr(v, "grad", None) is not None}
        for key, value in reference.state_dict(keep_vars=True).items():
            if value.grad is not None:
                worst_grad = max(worst_grad, (value.grad - grads[key]).abs().max().item())
    verdict = "bitwise equal" if worst_out == 0 and worst_grad == 0 else f"max |diff| {max(worst_out, worst_grad):.2e}"
    console.print(f"equivalence (one process, {len(batches)} fresh batches): outputs and parameter gradients {verdict}")


def results_table(rows: list[dict], title: str, best: str | None = None) -> Table:
    table = Table(title=title)
    for column in ("variant", "loss first -> last", "cross-host bytes/step", "cross-host msgs/step",
                   "intra-host bytes/step", "step time (median)", "IQR"):
        table.add_column(column, justify="right" if column != "variant" else "left")
    for r in rows:
        name = r["variant"] + (" (best flat)" if r["variant"] == best else "")
        table.add_row(name, f"{r['first_loss']:.4f} -> {r['final_loss']:.4f}",
                      human_bytes(r["cross_host_id_bytes"] + r["cross_host_embedding_bytes"]),
                      f"{r['cross_host_messages']:.0f}", human_bytes(r["intra_host_bytes"]),
                      f"{r['step_time_median_s'] * 1000:.1f} ms", f"{r['step_time_iqr_s'] * 1000:.1f} ms")
    return table

