"""`dmt-fx demo [TARGET] [--topology HxL] [--steps N]`: the README's main job.

Without --topology it compares on two shapes, the honest one first: 2x1 (two ranks, one
core each on a 2-core machine, so the network and the runtime decide), then 2x2, the
host hierarchy DMT is built for, labelled CPU-bound where its four ranks outnumber the
cores (there a step time measures CPU per rank more than the network).

TARGET defaults to `dmt-fx bench emulated`'s workload (`dmt_fx.models.sized:bench_model`,
16 tables x 10,000 x 64, local batch 256: shaped like a production DLRM's per-rank traffic),
used for every part, so the equivalence shown is that of the model timed.
Transform the model and show the rewrite, check in one process that the DMT model computes
what the original computes, then train DMT with identity towers (the original model),
DMT with linear tower modules at c = 4 (also with TorchRec's qcomms, `dmt-c4+fp16`) and every
fp32 flat baseline (`dmt_fx.baselines`, family "flat") plus `flat-table_wise+fp16` through
torchrun, and compare them with the best flat one.

Network: where root and iproute2 are present (`dmt_fx.bench.netns.check_requirements`),
the runs go over the emulated two-tier network of `dmt-fx bench emulated` (one network
namespace per host, inter-host links shaped to 1/20 of the measured intra-host all-to-all
bandwidth per rank), all variants in one torchrun launch; elsewhere over loopback, which
the output says in one line (there, step times show overheads, not the network win).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from typing import Any

import torch.fx as fx
import torch.nn as nn
from rich.console import Console
from rich.table import Table

from dmt_fx.baselines import baseline_names
from dmt_fx.baselines.registry import FLAT
from dmt_fx.bench import emulated
from dmt_fx.bench.netns import EmulationError, check_requirements
from dmt_fx.bench.variants import of_precision
from dmt_fx.cli.report import graph_diff, original_graph, plan_report
from dmt_fx.cli.run import add_job_options, check_job, job_spec
from dmt_fx.cli.tables import console, cpu_bound_note, side_by_side, towers_table
from dmt_fx.compiler.transform import transform
from dmt_fx.ir.result import dmt_result
from dmt_fx.ir.topology import Topology
from dmt_fx.jobs.runs import run_together
from dmt_fx.jobs.target import load_target, target_module


def add_parser(verbs: Any) -> None:
    parser = verbs.add_parser("demo", help="the main job: transform, verify, train DMT and every flat plan")
    add_job_options(parser, steps=DEMO_STEPS)
    parser.set_defaults(target=emulated.TARGET, batch_size=emulated.DEFAULT_BATCH,  # bench emulated's workload
                        topology=None)  # none given: DEFAULT_TOPOLOGIES
    parser.add_argument("--network", choices=("auto", "emulated", "loopback"), default="auto",
                        help="auto: the emulated two-tier network where root and iproute2 are present, "
                             "else loopback (default auto)")
    parser.set_defaults(run=run_demo)


DEMO_STEPS = 12  # steps per variant after warm-up (2 metered and 3 profiled among them): under 3 minutes on 2 cores
DMT_VARIANTS = ("dmt-identity", "dmt-c4", "dmt-c4+fp16")  # +fp16: TorchRec's qcomms on DMT's peer exchanges
QCOMMS_FLAT = ("flat-table_wise+fp16",)  # the flat plan with the same qcomms, counted in "best flat"
DEFAULT_TOPOLOGIES = (("2x1", "one core per rank: the network and the runtime decide"),
                      ("2x2", "the host hierarchy; CPU-bound where its 4 ranks outnumber the cores"))
STARVED = 0.25  # core wait above this share of a step: the step time measures the machine's load


def run_demo(args: argparse.Namespace) -> int:
    out = console()
    shapes = [(args.topology, "")] if args.topology else list(DEFAULT_TOPOLOGIES)
    args.topology = shapes[-1][0]  # the rewrite and the equivalence check: the hierarchical shape
    topology = Topology.parse(args.topology)
    check_job(args)  # a model distribute refuses stops here, before any output or torchrun
    model, inputs = load_target(args.target)
    original = original_graph(model, inputs)
    gm = transform(copy.deepcopy(model), topology, example_inputs=inputs)
    print_rewrite(out, gm, original)
    print_equivalence(out, args.target, model, topology, inputs)
    flat = (*of_precision(baseline_names(FLAT)), *QCOMMS_FLAT)
    all_rows = []
    for shape, label in shapes:
        rows, network = compare(shape_args(args, shape, several=len(shapes) > 1), [*DMT_VARIANTS, *flat], out)
        mode = ", every variant pipelined (flat: TorchRec's TrainPipelineSparseDist)" if args.pipeline else ""
        render(out, rows, flat, title=f"DMT vs TorchRec flat plans: {args.target} on {shape}, {network}, "
                                      f"{args.steps} steps{mode}" + (f" ({label})" if label else ""))
        all_rows += rows
    if len(shapes) > 1:  # every shape's rows in one summary (each row names its topology)
        with open(os.path.join(args.out, "summary.json"), "w") as handle:
            json.dump(all_rows, handle, indent=2)
    if args.format == "json":
        print(json.dumps(all_rows, indent=2))
    return 0


def shape_args(args: argparse.Namespace, topology: str, *, several: bool) -> argparse.Namespace:
    """The job options for one shape; each shape's files in OUT/<shape> when there are several."""
    options = copy.copy(args)
    options.topology = topology
    if several:
        options.out = os.path.join(args.out, topology)
    return options


def compare(args: argparse.Namespace, variants: list[str], out: Console) -> tuple[list[dict[str, Any]], str]:
    """Train `variants` on the emulated network when this machine can build it, else on loopback."""
    reason = "--network loopback"
    if args.network != "loopback":
        try:
            check_requirements()
        except EmulationError as err:  # not root, no iproute2, not Linux: fall back unless asked for
            if args.network == "emulated":
                raise
            reason = err.found
        else:
            records = emulated.run(emulated_args(args, variants), progress=lambda text: out.print(f"  {text}"))
            rate = records[0]["inter_host_rate_bytes_per_s"]
            return records, f"emulated hosts, inter-host {rate / 1e6:.1f} MB/s per rank"
    out.print(f"network: loopback, not the emulated two-tier network ({reason}); step times show overheads, "
              "not the network win")
    return loopback(args, variants, out), "loopback"


def loopback(args: argparse.Namespace, variants: list[str], out: Console) -> list[dict[str, Any]]:
    """Every variant in one local torchrun launch; summary.json and breakdown.png in --out."""
    spec = job_spec(args)
    with out.status(f"training {', '.join(variants)} in one launch ({spec.steps} steps each)"):
        rows = run_together(spec, variants)
    with open(os.path.join(spec.out, "summary.json"), "w") as handle:
        json.dump(rows, handle, indent=2)
    return rows


def emulated_args(args: argparse.Namespace, variants: list[str]) -> argparse.Namespace:
    """`bench emulated`'s options for the demo: its target, batch and steps, the default network."""
    parser = argparse.ArgumentParser()
    emulated.add_arguments(parser)
    options = parser.parse_args(["--topology", args.topology, "--variants", ",".join(variants),
                                 "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                                 "--out", args.out, "--no-shaped-probe",
                                 "--pipeline", "on" if getattr(args, "pipeline", False) else "off"])
    options.target = args.target
    return options


def render(out: Console, rows: list[dict[str, Any]], flat: tuple[str, ...], *, title: str) -> None:
    """DMT identity and DMT c = 4 next to the best flat plan: the demo's table, then the speedups."""
    best = min((r for r in rows if r["variant"] in flat), key=lambda r: r["step_time_median_s"])
    shown = [r for r in rows if r["variant"] in DMT_VARIANTS] + [best]
    out.print(demo_table(shown, best, title))
    starved = [r for r in shown if r.get("step_runqueue_wait_median_s", 0) > STARVED * r["step_time_median_s"]]
    if starved:  # one rank without a core holds every rank at the next collective
        out.print("load: " + "; ".join(f"{r['variant']}'s slowest rank waited for a core "
                                       f"{r['step_runqueue_wait_median_s'] * 1e3:.0f} of its "
                                       f"{r['step_time_median_s'] * 1e3:.0f} ms" for r in starved) +
                  " per step (median): the machine's load (ranks and other processes on too few cores), "
                  "not the variant's own work; compare CPU/step")
    note = cpu_bound_note(rows)
    if note:
        out.print(note)
    others = ", ".join(f"{r['variant']} {r['step_time_median_s'] * 1e3:.1f} ms" for r in rows
                       if r["variant"] in flat and r is not best)
    out.print(f"other flat plans: {others or 'none'}. Where each step goes: breakdown_s in the JSON, "
              "a stacked-bar PNG (*breakdown.png) in the --out folder.")


def demo_table(rows: list[dict[str, Any]], best: dict[str, Any], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("variant", "step time", "CPU/step", "core wait", "x-host B/rank/step", "x-host msgs/rank/step",
                   "final loss", "speedup"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for r in rows:
        name = r["variant"] + (" (best flat)" if r is best else "")
        cpu = r.get("step_cpu_median_s")  # process CPU time, slowest rank: waiting for a core is not in it
        wait = r.get("step_runqueue_wait_median_s")  # the slowest rank's time runnable without a core
        table.add_row(name, f"{r['step_time_median_s'] * 1e3:.1f} ms", f"{cpu * 1e3:.1f} ms" if cpu else "n/a",
                      f"{wait * 1e3:.1f} ms" if wait is not None else "n/a", f"{r['cross_host_bytes']:,.0f}",
                      f"{r['cross_host_messages']:.0f}", f"{r['final_loss']:.4f}",
                      f"{best['step_time_median_s'] / r['step_time_median_s']:.2f}x")
    return table


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
