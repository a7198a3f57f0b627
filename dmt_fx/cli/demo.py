"""`dmt-fx demo [TARGET] [--topology 2x2] [--steps 300]`: the README's main job.

Transform the model and show the rewrite, check in one process that the DMT model computes
what the original computes, then train DMT and every flat baseline (`dmt_fx.baselines`,
family "flat") through torchrun and compare them with the best flat one.
"""

from __future__ import annotations

import argparse
import copy
import json
from typing import Any

import torch.fx as fx
import torch.nn as nn
from rich.console import Console

from dmt_fx.baselines import baseline_names
from dmt_fx.baselines.registry import FLAT
from dmt_fx.cli.report import graph_diff, original_graph, plan_report
from dmt_fx.cli.run import add_job_options, check_job, train
from dmt_fx.cli.tables import console, results_table, side_by_side, towers_table
from dmt_fx.compiler.transform import transform
from dmt_fx.ir.result import dmt_result
from dmt_fx.ir.topology import Topology
from dmt_fx.jobs.target import load_target, target_module


def add_parser(verbs: Any) -> None:
    parser = verbs.add_parser("demo", help="the main job: transform, verify, train DMT and every flat plan")
    add_job_options(parser, steps=300)
    parser.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    out = console()
    topology = Topology.parse(args.topology)
    check_job(args)  # a model distribute refuses stops here, before any output or torchrun
    model, inputs = load_target(args.target)
    original = original_graph(model, inputs)
    gm = transform(copy.deepcopy(model), topology, example_inputs=inputs)
    print_rewrite(out, gm, original)
    print_equivalence(out, args.target, model, topology, inputs)
    flat = baseline_names(FLAT)
    rows = train(args, ["dmt", *flat], out)
    render(out, rows, flat, title=f"DMT vs TorchRec flat plans: {args.target} on {args.topology} "
                                  f"(emulated hosts), {args.steps} steps")
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    return 0


def render(out: Console, rows: list[dict[str, Any]], flat: tuple[str, ...], *, title: str) -> None:
    """The results table with the best flat plan marked, and DMT against it."""
    best = min((r for r in rows if r["variant"] in flat), key=lambda r: r["step_time_median_s"])
    out.print(results_table(rows, title, best=best["variant"]))
    dmt = next(r for r in rows if r["variant"] == "dmt")
    out.print(f"DMT step time / best flat ({best['variant']}): "
              f"{dmt['step_time_median_s'] / best['step_time_median_s']:.2f}x; cross-host messages per step: "
              f"{dmt['cross_host_messages']:.0f} vs {best['cross_host_messages']:.0f}. On one 2-core machine the "
              "emulated hosts share a loopback link, so step times show overheads, not the network win "
              "(see README, Performance).")


def print_rewrite(out: Console, gm: fx.GraphModule, original: fx.GraphModule) -> None:
    diff = graph_diff(original, gm)
    out.print(f"graph diff: {diff['inserted']} nodes inserted (green), {diff['removed']} removed (red)")
    out.print(side_by_side(diff["original"], diff["rewritten"]))
    result = dmt_result(gm)
    out.print(towers_table(plan_report(gm)["towers"], title=f"tower plan ({result.plan.partitioner}, "
                                                             f"{result.topology})"))
    roles: dict[str, int] = {}
    for node in gm.graph.nodes:
        role = node.meta.get("dmt", {}).get("role")
        if role:
            roles[role] = roles.get(role, 0) + 1
    out.print("rewrite: " + ", ".join(f"{n} {r}" for r, n in roles.items()) +
              " (`dmt-fx diff` also lists the inserted nodes per tower)")


def print_equivalence(out: Console, target: str, model: nn.Module, topology: Topology, inputs: Any) -> None:
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
    out.print(f"equivalence (one process, {len(batches)} fresh batches): outputs and parameter gradients {verdict}")
