"""One rank of a `dmt-fx run`: launched by torchrun, trains a DMT model or a baseline.

Every rank builds the model from the TARGET factory, takes rank 0's weights (so all ranks
start equal), transforms and distributes it (or builds a TorchRec baseline), then trains
on synthetic global batches: step s uses batch `make_inputs(N x B, seed=s)` and rank r
takes rows [r*B, (r+1)*B). Results go to OUT/rank<r>.json (and outputs_rank<r>.pt).

Traffic: the meter (`dmt_fx.runtime.traffic`, a TorchDispatchMode) watches `--traffic-steps`
steps right after the warm-up (`metered_steps` in the JSON) and `traffic` holds their
per-step means, the measured dense all-reduce included (`dense_allreduce_bytes`). A
dispatch mode runs Python for every op of the step (2-3x slower steps on this machine), so
a step-time summary should leave the metered steps out; every other step runs without it.
Per step the rank also records its process CPU time (`step_cpu_s`), its training thread's
alone (`step_main_thread_cpu_s`; the rest is gloo's threads, whose socket work the kernel's
network stack bills to them) and how long its main thread waited for a core (`step_runqueue_wait_s`): on a shared machine they tell the
job's own cost from the load around it.

`--variants a,b,c` trains several variants one after the other in the SAME process group
(one torchrun launch; the model is rebuilt per variant, every variant starts from the same
rank-0 weights and sees the same batches) and writes OUT/<variant>/rank<r>.json each; it is
what `dmt-fx bench traffic` uses to measure many variants per topology in one launch.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import signal
import sys
import time
import traceback
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

import dmt_fx
from dmt_fx._compat import exit_now
from dmt_fx.bench import variants
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.topology import Topology
from dmt_fx.jobs import breakdown
from dmt_fx.jobs.breakdown import profiled
from dmt_fx.jobs.data import slice_batch, synthetic_inputs
from dmt_fx.jobs.faults import save_fault
from dmt_fx.jobs.modes import add_mode_args, evaluate, save_plain_state, seed_step, set_train_mode
from dmt_fx.jobs.steps import Steps, batch_of, split_variant
from dmt_fx.jobs.target import load_target, target_module
from dmt_fx.runtime import resume
from dmt_fx.runtime.groups import check_world
from dmt_fx.runtime.rank_status import settle_refusal
from dmt_fx.runtime.shardings import SHARDINGS
from dmt_fx.runtime.traffic import TrafficMeter, ddp_allreduce_bytes, ddp_param_bytes

OPTIMIZERS = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dmt_fx.jobs.worker")
    p.add_argument("--target", required=True)
    p.add_argument("--topology", required=True)
    p.add_argument("--variant", default="dmt", help="dmt or a baseline name")
    p.add_argument("--variants", default=None,
                   help="comma-separated variants run one after the other in this process group; "
                        "results in OUT/<variant>/rank<r>.json (overrides --variant); NAME+pipeline trains "
                        "NAME as --pipeline does")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32, help="local batch per rank")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd",
                   help="dense optimizer; TorchRec fuses the same one into the embedding tables")
    p.add_argument("--sharding", default="table_wise", choices=SHARDINGS.names(),
                   help="DMT: how TorchRec shards each host's tables over its ranks")
    p.add_argument("--out", required=True)
    p.add_argument("--save-checkpoint", default=None, help="DCP directory written after training")
    p.add_argument("--load-checkpoint", default=None, help="DCP directory loaded before training")
    p.add_argument("--plan", default=None, help="a tower plan (JSON file or string) for transform")
    p.add_argument("--cases", default=None,
                   help='JSON file: [{"name": N, "args": [worker flags]}, ...]; each case runs in turn in this '
                        "process group with these flags added, results in OUT/<name>/")
    p.add_argument("--tower-module", default="identity", help="identity | linear | dot | dcn")
    p.add_argument("--compression", type=int, default=1)
    p.add_argument("--towers-per-domain", type=int, default=1, help="k: the partitioner's towers per domain")
    p.add_argument("--record-outputs", action="store_true")
    add_mode_args(p)
    p.add_argument("--checkpoint-dir", default=None,
                   help="periodic checkpoints here; a rerun of the same command resumes from the latest")
    p.add_argument("--checkpoint-every", type=int, default=0, help="steps between periodic checkpoints")
    p.add_argument("--kill-rank", type=int, default=-1, help="failure injection: SIGKILL this rank ...")
    p.add_argument("--kill-step", type=int, default=-1, help="... at the start of this step")
    p.add_argument("--timeout-s", type=float, default=float(os.environ.get("DMT_FX_TIMEOUT_S", 120)))
    p.add_argument("--warmup", type=int, default=2, help="steps left out of time and traffic means")
    p.add_argument("--profile-steps", type=int, default=3,
                   help="steps run under torch.profiler after the metered ones, for breakdown_s (0: none); "
                        "left out of the step times like the metered steps")
    p.add_argument("--pipeline", action="store_true",
                   help="train through a sparse-dist pipeline: the next batch's id exchange and input dist "
                        "overlap this batch's step (DMT: dmt_fx.runtime.pipeline; baselines: TorchRec's "
                        "TrainPipelineSparseDist)")
    p.add_argument("--traffic-steps", type=int, default=2,
                   help="steps the traffic meter watches after the warm-up (-1: all); the meter slows the "
                        "steps it watches, which the results list as metered_steps")
    return p.parse_args(argv)


def target_hook(spec: str, name: str) -> Any:
    """A helper of the TARGET: the factory's attribute `name` (one module can hold several
    factories, each with its own inputs), else the target module's, else None."""
    module, attr = target_module(spec)
    factory = functools.reduce(getattr, attr.split("."), module)
    return getattr(factory, name, None) or getattr(module, name, None)


def batch_maker(spec: str, example_inputs: tuple | None, gm: Any) -> Callable[[int, int], tuple]:
    """The target's `make_inputs(batch, seed)` (see `target_hook`) if it has one, else synthetic batches."""
    make = target_hook(spec, "make_inputs")
    if make is not None:
        return make
    if example_inputs is None:
        raise DMTError(f"target {spec} without make_inputs() or example inputs",
                       "a factory returning (model, example_inputs), or a make_inputs(batch, seed) beside it",
                       ["return (model, example_inputs) from the factory"])
    sites = dmt_fx.dmt_result(gm).sites
    rows = {f.key: sites.table(f.table).num_embeddings for f in sites.features}
    return lambda batch, seed: synthetic_inputs(example_inputs, rows, batch, seed)


def batch_slicer(spec: str) -> Callable[[Any, int, int], Any]:
    """The target's `slice_inputs(inputs, start, stop)` if it has one (inputs the generic
    slicer cannot cut, e.g. flat id lists with offsets), else `slice_batch`."""
    return target_hook(spec, "slice_inputs") or slice_batch


def broadcast_model(model: torch.nn.Module) -> None:
    """Every rank starts from rank 0's weights, whatever the factory's randomness (meta
    tensors have none: distribute or DMP initialise this rank's shards of them)."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if not tensor.is_meta:
                dist.broadcast(tensor, src=0)


def build(args: argparse.Namespace, topology: Topology):
    model, example_inputs = load_target(args.target)
    broadcast_model(model)
    kind, compression, variant = args.tower_module, args.compression, variants.parse(args.variant)
    if variant.kind == "linear":  # e.g. dmt-c4: compressing tower modules, c = 4
        kind, compression = (kind if kind != "identity" else "linear"), variant.compression
    elif variant.kind in variants.SEQUENCE_KINDS.values():  # e.g. dmt-seqmean-c4: sequence tower modules
        kind, compression = variant.kind, variant.compression
    torch.manual_seed(0)  # tower modules start equal on every rank (and in a reference run)
    gm = dmt_fx.transform(model, topology, example_inputs=example_inputs, tower_module=kind,
                          compression=compression, plan=args.plan, towers_per_domain=args.towers_per_domain)
    make = batch_maker(args.target, example_inputs, gm)
    optim = {"optimizer_class": OPTIMIZERS[args.optimizer], "optimizer_kwargs": {"lr": args.lr}}
    if is_dmt(args.variant):
        module, optimizer = dmt_fx.distribute(gm, sharding=args.sharding, comm_precision=variant.precision,
                                              timeout=datetime.timedelta(seconds=args.timeout_s), **optim)
    else:
        from dmt_fx.baselines import build_baseline
        from dmt_fx.baselines.pipeline import TrainModel, check_pipelinable

        if args.pipeline:  # TorchRec's pipeline calls model(batch) -> (loss, output)
            check_pipelinable(args.variant)
            model = TrainModel(model, len(make(2, 0)))
        module, optimizer = build_baseline(args.variant, model, topology=topology,
                                           plan=dmt_fx.tower_plan(gm), **optim)
    return module, optimizer, make


def is_dmt(variant: str) -> bool:
    return variants.is_dmt(variant)


def metered_steps(args: argparse.Namespace, first: int) -> range:
    """The steps the traffic meter watches: --traffic-steps steps after the warm-up (at least
    the last step when there are no more), never before this run's first step."""
    start = max(first, min(args.warmup, max(args.steps - 1, 0)))
    stop = args.steps if args.traffic_steps < 0 else min(args.steps, start + args.traffic_steps)
    return range(start, stop)


def profiled_steps(args: argparse.Namespace, metered: range) -> range:
    """--profile-steps steps right after the metered ones (the profiler slows a step less
    than the meter, but still: the summary leaves them out of the step times too)."""
    start = max(metered.stop, min(args.warmup, args.steps))
    if getattr(args, "pipeline", False):  # the last steps: see `profiled`
        start = max(start, args.steps - max(args.profile_steps, 0))
    return range(start, min(args.steps, start + max(args.profile_steps, 0)))


def _breakdown(profiles: list, steps_per_profile: int = 1) -> dict[str, Any]:
    per_step = [tuple({k: v / steps_per_profile for k, v in part.items()}
                      for part in breakdown.step_breakdown(list(p.events()))) for p in profiles]
    stages = breakdown.medians([b for b, _ in per_step])
    return {"breakdown_s": stages, "exposed_comm_s": breakdown.exposed_comm(stages),
            "comm_thread_s": breakdown.medians([c for _, c in per_step])}


def train(args: argparse.Namespace, topology: Topology) -> dict[str, Any]:
    rank, world = dist.get_rank(), dist.get_world_size()
    module, optimizer, make = build(args, topology)
    set_train_mode(module, args.train_mode)
    if args.load_checkpoint:
        state = module.state_dict()
        dcp.load(state, checkpoint_id=args.load_checkpoint)
        module.load_state_dict(state)
    first = resume.restore(args.checkpoint_dir, module, optimizer) if args.checkpoint_dir else 0
    meter, metered = TrafficMeter(topology, rank), metered_steps(args, first)
    steps_profiled, profiles = profiled_steps(args, metered), []
    losses, times, cpu_times, main_cpu_times, queue_waits, outputs = [], [], [], [], [], []
    kill_rank, kill_step, kill_signal = _fault(args)
    mode = "off" if not args.pipeline else "dmt" if is_dmt(args.variant) else "torchrec"
    batch = batch_of(make, batch_slicer(args.target), rank, world, args.batch_size)
    steps = Steps(module, optimizer, batch, first, args.steps, mode)
    for step in range(first, args.steps):
        args.current_step = step
        if rank == kill_rank and step == kill_step:
            os.kill(os.getpid(), kill_signal)
        steps.prepare(step)  # this step's batch (and a pipeline's next ones), outside the timed part
        seed_step(args, step, rank)
        start, cpu_start, queued = time.perf_counter(), time.process_time(), runqueue_wait_s()
        main_start = time.thread_time()
        with meter if step in metered else contextlib.nullcontext(), profiled(step, steps_profiled, args.pipeline,
                                                                              profiles):
            out, loss = steps.run(step)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)  # all threads (gloo's too); no wait for a core
        main_cpu_times.append(time.thread_time() - main_start)  # the training thread alone (not gloo's)
        queue_waits.append(runqueue_wait_s() - queued)
        if step in metered:
            meter.step()
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(total.item() / world)
        if args.record_outputs:
            outputs.append(out.detach().clone())
        if args.checkpoint_dir and args.checkpoint_every and (step + 1) % args.checkpoint_every == 0:
            with save_fault(args.checkpoint_dir, rank, step):  # kill trials only (DMT_FX_SAVE_FAULT)
                resume.save(args.checkpoint_dir, step, module, optimizer)
        _progress(args, rank, step)
    evaluate(args, module, batch, rank)
    if args.save_checkpoint:
        dcp.save(module.state_dict(), checkpoint_id=args.save_checkpoint)
    if outputs:
        torch.save(outputs, os.path.join(args.out, f"outputs_rank{rank}.pt"))
        save_plain_state(args, module, rank)
    traffic, dense_bytes = meter.summary(), ddp_param_bytes(module)
    return {"rank": rank, "variant": args.variant, "topology": str(topology), "first_step": first, "losses": losses,
            "pipelined": bool(args.pipeline), "pipelined_modules": steps.pipelined_modules(),
            "step_times_s": times, "step_cpu_s": cpu_times, "step_main_thread_cpu_s": main_cpu_times,
            "step_runqueue_wait_s": queue_waits, "traffic": traffic, "metered_steps": list(metered),
            "profiled_steps": list(steps_profiled),
            **_breakdown(profiles, len(steps_profiled) if args.pipeline else 1),
            "dense_param_bytes": dense_bytes, "dense_allreduce_bytes": traffic["dense_allreduce_bytes"],
            "dense_allreduce_bytes_estimate": ddp_allreduce_bytes(dense_bytes, topology)}


def runqueue_wait_s() -> float:
    """Seconds this thread has waited, runnable, for a core (Linux schedstat; 0.0 elsewhere):
    per step, the part of a wall time that is load on the machine, not the job."""
    try:
        with open("/proc/thread-self/schedstat") as handle:
            return int(handle.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _fault(args: argparse.Namespace) -> tuple[int, int, int]:
    """Failure injection: --kill-rank/--kill-step (SIGKILL), or DMT_FX_FAULT="rank=R,step=S[,signal=STOP]"
    (so a test can rerun the very same command line without it; STOP makes a rank stop answering)."""
    spec = dict(part.split("=") for part in os.environ.get("DMT_FX_FAULT", "").split(",") if "=" in part)
    sig = getattr(signal, f"SIG{spec.get('signal', 'KILL')}")
    return int(spec.get("rank", args.kill_rank)), int(spec.get("step", args.kill_step)), sig


def _progress(args: argparse.Namespace, rank: int, step: int) -> None:
    if rank == 0:
        with open(os.path.join(args.out, "progress"), "w") as handle:
            handle.write(f"{step + 1} {args.steps}\n")


def say(text: str) -> None:
    """Write `text` and its newline to stderr in ONE write.

    The ranks of a host share their agent's log file, and `print` writes the text and the
    newline apart: under PYTHONUNBUFFERED two ranks refusing at once then interleave, and a
    rank's line starts in the middle of another's."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=args.timeout_s))
    rank = dist.get_rank()
    with open(os.path.join(args.out, f"pid_rank{rank}"), "w") as handle:  # lets the launcher name a stuck rank
        handle.write(str(os.getpid()))
    try:
        topology = Topology.parse(args.topology)
        check_world(topology)  # before the first collective, on every rank
        if args.cases:
            return _train_cases(argv, args, topology)
        if args.variants:
            return _train_variants(args, topology)
        result = train(args, topology)
    except DMTError as exc:
        say(f"dmt-fx worker rank {rank}: error: {exc}")
        settle_refusal(exc)  # a refusal every rank raised: let every rank say why before any exits
        return 2
    except Exception as exc:  # a peer died or stopped answering: say so, exit non-zero, no hang
        where = f"at step {args.current_step}" if hasattr(args, "current_step") else "during setup"
        if args.variants or args.cases:
            where += f" of {'case' if args.cases else 'variant'} {getattr(args, 'case', args.variant)}"
        say(f"dmt-fx worker rank {rank}: failed {where} (a peer rank died or stopped answering, or see "
            f"below): {type(exc).__name__}: {str(exc).splitlines()[0]}")
        say(traceback.format_exc().rstrip())  # one write: the host's other ranks share this log
        settle_refusal(exc)
        exit_now(1)  # skip teardown: a collective with a dead peer could block it
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)
    dmt_fx.shutdown()  # a barrier, then teardown that cannot hang at exit (runtime/shutdown.py)
    return 0


def _train_variants(args: argparse.Namespace, topology: Topology) -> int:
    """Every variant of `--variants` in turn, same process group, one result file each."""
    base_out = args.out
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    rank = dist.get_rank()
    base_pipeline = args.pipeline
    for variant in variants:  # 'NAME+pipeline': NAME through a train pipeline (dmt_fx.jobs.steps)
        (args.variant, args.pipeline), args.out = split_variant(variant, base_pipeline), os.path.join(base_out, variant)
        os.makedirs(args.out, exist_ok=True)
        for attr in ("current_step",):
            if hasattr(args, attr):
                delattr(args, attr)
        result = train(args, topology)
        with open(os.path.join(args.out, f"rank{rank}.json"), "w") as handle:
            json.dump(result, handle)
        dist.barrier()  # the next variant's setup starts together on every rank
    args.out = base_out
    dmt_fx.shutdown()
    return 0


def fresh_world(number: int, timeout_s: float) -> None:
    """A new default process group for case `number`, on its own prefix of torchrun's store.

    Cases must not see each other's groups: TorchRec's ShardingEnv creates a group per sharded
    collection on the ranks that hold tables, so after a plan where some host holds none the
    ranks disagree on the name of the next group and the next case's groups would hang."""
    dist.barrier()
    dist.destroy_process_group()
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timeout)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timeout,
                            store=dist.PrefixStore(f"dmt_fx_case_{number}", store),
                            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))


def _train_cases(argv: list[str] | None, args: argparse.Namespace, topology: Topology) -> int:
    """Every case of `--cases` in turn, same process group: the command line plus the case's
    flags (argparse keeps the last value of a flag), results in OUT/<name>/."""
    base = list(sys.argv[1:] if argv is None else argv)
    with open(args.cases) as handle:
        cases = json.load(handle)
    rank = dist.get_rank()
    for number, case in enumerate(cases):
        if number:
            fresh_world(number, args.timeout_s)
        args.case = case["name"]
        out = os.path.join(args.out, case["name"])
        os.makedirs(out, exist_ok=True)
        case_args = parse_args([*base, *case.get("args", ()), "--out", out])
        try:
            result = train(case_args, topology)
        finally:  # a failure message names the step of this case
            vars(args).pop("current_step", None)
            if hasattr(case_args, "current_step"):
                args.current_step = case_args.current_step
        with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
            json.dump(result, handle)
        dist.barrier()  # the next case's setup starts together on every rank
    dmt_fx.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
