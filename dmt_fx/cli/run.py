"""`dmt-fx run [TARGET] --topology 2x2 --steps N [--baseline NAME]`: DMT and a baseline through torchrun.

Both train on the same batches from the same weights, one torchrun launch each (one agent
per emulated host); the results table puts them side by side. Baselines come from
`dmt_fx.baselines.BASELINES`; a TARGET file can register its own (`register_baseline`):
the CLI imports it before it checks the name, and so does every rank. Quantized comms:
`--baseline flat-table_wise+fp16` (TorchRec's qcomms), `--comm-precision fp16` for DMT.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Callable, Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from dmt_fx.baselines import BASELINES
from dmt_fx.bench.variants import DMT, Variant
from dmt_fx.cli.options import add_ranks_per_host, add_towers_per_domain, registered, topology_of
from dmt_fx.cli.tables import console, results_table
from dmt_fx.compiler.tower_modules import TOWER_MODULES
from dmt_fx.compiler.transform import transform
from dmt_fx.jobs.runs import RunSpec, run_many
from dmt_fx.jobs.target import load_target, target_module
from dmt_fx.models.zoo import DEFAULT_TARGET
from dmt_fx.runtime.distribute import check_distributable
from dmt_fx.runtime.qcomms import FP32, PRECISIONS

NO_BASELINE = "none"


def add_parser(verbs: Any) -> None:
    parser = verbs.add_parser("run", help="train DMT and a flat TorchRec baseline through torchrun, side by side")
    add_job_options(parser, steps=50)
    parser.add_argument("--baseline", default="flat-table_wise",
                        help=f"{' | '.join((*BASELINES.names(), NO_BASELINE))} (default %(default)s); "
                             "a TARGET file can add its own with dmt_fx.baselines.register_baseline")
    parser.add_argument("--tower-module", default="identity", metavar="KIND",
                        help=f"DMT tower modules: {registered(TOWER_MODULES)} (anything but identity "
                             "changes the model)")
    parser.add_argument("--compression", type=int, default=1, help="c: tower outputs are 1/c as wide")
    add_towers_per_domain(parser)
    parser.add_argument("--comm-precision", choices=PRECISIONS, default=FP32,
                        help="DMT's peer pooled exchanges through TorchRec's qcomms: fp16 (FP16 forward, BF16 "
                             "backward) or bf16; the DMT row is then dmt+fp16 (compare with --baseline "
                             "flat-table_wise+fp16; default %(default)s)")
    parser.set_defaults(run=run_run)


def add_job_options(parser: argparse.ArgumentParser, steps: int) -> None:
    """Options of the verbs that train through torchrun (`run`, `demo`)."""
    parser.add_argument("target", metavar="TARGET", nargs="?", default=DEFAULT_TARGET,
                        help=f"pkg.module:factory or path/to/file.py:factory (default {DEFAULT_TARGET})")
    parser.add_argument("--topology", default="2x2", help="HOSTSxRANKS_PER_HOST emulated on this machine")
    add_ranks_per_host(parser)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch-size", type=int, default=32, help="local batch per rank")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--optimizer", choices=("sgd", "adagrad", "adam"), default="adagrad",
                        help="dense optimizer, fused into the tables by TorchRec (default adagrad)")
    parser.add_argument("--out", default="results/run", help="logs, per-rank JSON and summary.json")
    parser.add_argument("--format", choices=("rich", "json"), default="rich")
    parser.add_argument("--pipeline", action="store_true",
                        help="train every variant through a sparse-dist train pipeline: the next batch's id "
                             "exchange and input dist overlap this batch's step (flat plans: TorchRec's "
                             "TrainPipelineSparseDist; DMT: dmt_fx.runtime.pipeline); JSON field pipelined")


def run_run(args: argparse.Namespace) -> int:
    dmt = Variant(DMT, precision=getattr(args, "comm_precision", FP32)).name  # dmt, dmt+fp16, dmt+bf16
    variants = [dmt, *baseline_variants(args.target, args.baseline)]
    check_job(args)
    out = console()
    rows = train(args, variants, out)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    out.print(results_table(rows, run_title(args)))
    out.print(f"per-rank results, logs and summary.json in {args.out}/")
    return 0


def run_title(args: argparse.Namespace) -> str:
    """The results table's title: what ran, and whether every variant trained pipelined."""
    mode = (", every variant pipelined (flat: TorchRec's TrainPipelineSparseDist; DMT: dmt_fx.runtime.pipeline)"
            if getattr(args, "pipeline", False) else ", not pipelined")
    return f"{args.target} on {args.topology}, {args.steps} steps{mode}"


def baseline_variants(target: str, baseline: str) -> list[str]:
    """[baseline] once it is known to be registered (after TARGET's own registrations), [] for none."""
    if baseline == NO_BASELINE:
        return []
    target_module(target)  # importing TARGET runs its register_baseline calls, as on every rank
    BASELINES.get(baseline)  # an unknown name: a DMTError listing the registered ones
    return [baseline]


def check_job(args: argparse.Namespace) -> None:
    """Refuse before torchrun starts what every rank would refuse: transform TARGET here as the
    worker does and check that `distribute` takes the result. A DMTError reaches main() whole,
    printed once, exit code 2 (from the ranks, the launcher could only quote their first lines)."""
    model, inputs = load_target(args.target)
    gm = transform(model, topology_of(args), example_inputs=inputs,
                   tower_module=getattr(args, "tower_module", "identity"), compression=getattr(args, "compression", 1),
                   towers_per_domain=getattr(args, "towers_per_domain", 1))
    check_distributable(gm)


def job_spec(args: argparse.Namespace) -> RunSpec:
    extra = ("--tower-module", args.tower_module, "--compression", str(args.compression)) \
        if getattr(args, "tower_module", "identity") != "identity" else ()
    k = getattr(args, "towers_per_domain", 1)
    extra += ("--towers-per-domain", str(k)) if k != 1 else ()
    extra += ("--pipeline",) if getattr(args, "pipeline", False) else ()
    return RunSpec(args.target, topology_of(args), args.steps, args.batch_size, args.lr,
                   args.optimizer, args.out, extra)


def train(args: argparse.Namespace, variants: Sequence[str], out: Console) -> list[dict[str, Any]]:
    """Run the variants one after the other with a progress bar; write and return their rows."""
    spec = job_spec(args)
    with Progress(TextColumn("{task.description:>20}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=out, disable=args.format == "json") as bar:
        rows = run_many(spec, variants, _progress(bar, spec.steps))
    os.makedirs(spec.out, exist_ok=True)
    with open(os.path.join(spec.out, "summary.json"), "w") as handle:
        json.dump(rows, handle, indent=2)
    return rows


def _progress(bar: Progress, steps: int) -> Callable[[str, str], Callable[[], None]]:
    """Per variant, a poll that moves its bar to the step rank 0 last wrote in `path`."""
    def start(variant: str, path: str) -> Callable[[], None]:
        task = bar.add_task(variant, total=steps)

        def poll() -> None:
            try:
                with open(path) as handle:
                    bar.update(task, completed=int(handle.read().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        return poll
    return start
