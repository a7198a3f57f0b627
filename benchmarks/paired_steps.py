"""Paired step times on 2x1: two variants built in ONE launch, chunks alternated.

    python benchmarks/paired_steps.py [--variants flat-table_wise+fp16,dmt-identity+fp16]
                                      [--reps 30] [--chunk 20] [--rate 55MB/s]
                                      [--out results/paired_steps.json]

Unshaped by default (loopback: CPU and runtime overhead decide). With `--rate` the two
ranks run as two emulated hosts (`dmt-fx bench emulated`'s network namespaces, root and
iproute2 needed) whose link is shaped to that rate per rank, as `bench emulated` shapes it
after its probe: the same comparison with the network deciding, without the launch-to-launch
noise of separate runs.

Why paired: on a 2-core machine two launches of the same variant differ by more than the
effects looked for here (+-1 ms per step). Both models are built in the same two processes
(`dmt_fx.jobs.worker.build`, the bench model and batch of `dmt-fx bench emulated`), then
trained on the same pre-built batches in `--chunk`-step chunks, one chunk of each arm in
turn, `--reps` times after one warm-up round; each chunk is timed between barriers, in wall
and process CPU time, on rank 0.

Arms: each variant as built, and for a DMT variant also "<variant>@no-agreement": its batch
agreement replaced by the rank's own checks alone (no collective; the peer exchange then
sends lengths and ids in two all-to-alls, as without an agreement). That arm is not a
product configuration: a refused batch would strand the peers. It prices the agreement's
collective. Reported per arm: median wall and CPU ms per step, and the median of the
per-round ratio first arm / this arm (above 1: this arm is faster).

This is how the 2026-12-07 report priced one small gloo collective at about 1 ms per step.

A variant named "<variant>@no-solo" (e.g. `--variants flat-table_wise+fp16,dmt-identity+fp16,
dmt-identity+fp16@no-solo`) is that DMT variant built again with its one-rank hosts' lookups
sent back through TorchRec's dists (`HostLookup.solo` off): it prices that shortcut. Not a
product configuration either.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

NO_AGREEMENT = "no-agreement"
NO_SOLO = "@no-solo"


def worker(argv: list[str]) -> None:
    import torch
    import torch.distributed as dist

    import dmt_fx.runtime.rank_status as rank_status
    from dmt_fx import Topology
    from dmt_fx.jobs import worker as job
    from dmt_fx.jobs.data import slice_batch
    from dmt_fx.jobs.steps import train_step

    args = json.loads(argv[0])
    agreed = rank_status.AgreedValidator.forward
    skipping = {"on": False}

    def forward(self: Any, *values: Any) -> None:  # the arm's switch, read at every call
        return self.validator(*values) if skipping["on"] else agreed(self, *values)

    rank_status.AgreedValidator.forward = forward  # type: ignore[method-assign]
    dist.init_process_group("gloo")
    rank, world, batch = dist.get_rank(), dist.get_world_size(), args["batch"]
    torch.set_num_threads(1)
    models = {}
    for variant in args["variants"]:
        parsed = job.parse_args(["--target", "dmt_fx.models.sized:bench_model", "--topology", "2x1",
                                 "--variant", variant.removesuffix(NO_SOLO), "--out", args["out_dir"],
                                 "--batch-size", str(batch)])
        models[variant] = job.build(parsed, Topology(2, 1))
        if variant.endswith(NO_SOLO):
            no_solo(models[variant][0])
    make = next(iter(models.values()))[2]
    batches = []
    for step in range(args["chunk"]):
        local = slice_batch(make(batch * world, step), rank * batch, (rank + 1) * batch)
        batches.append((local, (local[0][:, :1] > 0).float()))
    arms = [(v, False) for v in args["variants"]] + [(v, True) for v in args["variants"]
                                                     if v.startswith("dmt") and not v.endswith(NO_SOLO)]
    times: dict[str, tuple[list[float], list[float]]] = {label(v, s): ([], []) for v, s in arms}
    for rep in range(args["reps"] + 1):
        for variant, skip in arms:
            skipping["on"] = skip
            module, optimizer, _ = models[variant]
            dist.barrier()
            wall, cpu = time.perf_counter(), time.process_time()
            for step in range(args["chunk"]):
                train_step(module, optimizer, *batches[step])
            dist.barrier()
            if rep:  # round 0 warms up
                times[label(variant, skip)][0].append((time.perf_counter() - wall) / args["chunk"] * 1e3)
                times[label(variant, skip)][1].append((time.process_time() - cpu) / args["chunk"] * 1e3)
    if rank == 0:
        with open(os.path.join(args["out_dir"], "rank0.json"), "w") as f:
            json.dump(times, f)
    os._exit(0)  # both models' process groups: no orderly teardown needed for a measurement


def no_solo(module: Any) -> None:
    """The module's one-rank hosts' lookups through TorchRec's dists again (module doc)."""
    from dmt_fx.runtime.exchange import HostLookup

    for lookup in module.modules():
        if isinstance(lookup, HostLookup):
            lookup.solo = None


def label(variant: str, skip: bool) -> str:
    return f"{variant}@{NO_AGREEMENT}" if skip else variant


def summarize(times: dict[str, list[list[float]]]) -> list[dict[str, Any]]:
    first = next(iter(times.values()))[0]
    return [{"arm": arm, "wall_ms_median": statistics.median(wall), "cpu_ms_median": statistics.median(cpu),
             "first_over_this_median": statistics.median(a / b for a, b in zip(first, wall)), "rounds": len(wall)}
            for arm, (wall, cpu) in times.items()]


def run_arms(spec: dict[str, Any], work: str, rate: float | None) -> Any:
    """One launch of the two ranks: on loopback, or as two emulated hosts over a shaped link."""
    from dmt_fx import Topology
    from dmt_fx.jobs.launch import launch

    args = (Topology(2, 1), [json.dumps(spec)], work)
    if rate is None:
        return launch(*args, module="benchmarks.paired_steps", deadline_s=1200)
    from dmt_fx.bench.netns import EmulatedCluster

    with EmulatedCluster(2) as cluster:
        cluster.shape(rate)  # a host of one rank: its link carries one rank's share
        return launch(*args, module="benchmarks.paired_steps", deadline_s=1200, prefix=cluster.prefix,
                      master_addr=cluster.address(0), host_env=cluster.host_env)


def checked_rate(text: str | None) -> float | None:
    """--rate in bytes/s (None: unshaped), or a one-line refusal naming the flag."""
    from dmt_fx.bench.emulated import parse_rate
    from dmt_fx.bench.netns import check_requirements
    from dmt_fx.ir.errors import DMTError

    if text is None:
        return None
    try:
        rate = parse_rate(text)
    except DMTError as error:  # its own fix names bench emulated's flag
        sys.exit(f"paired_steps.py: --rate {text!r}; expected {error.expected}, e.g. --rate 55MB/s")
    try:
        check_requirements()  # root and iproute2, before anything is built
    except DMTError as error:
        sys.exit(f"paired_steps.py --rate needs the emulated network: {error.one_line()}")
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="flat-table_wise+fp16,dmt-identity+fp16")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--chunk", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rate", default=None, help="shape the inter-host link to this rate per rank "
                        "(e.g. 55MB/s, bench emulated's syntax); default: unshaped loopback")
    parser.add_argument("--out", default="results/paired_steps.json")
    args = parser.parse_args()
    rate = checked_rate(args.rate)
    flat_no_solo = [v for v in args.variants.split(",") if v.endswith(NO_SOLO) and not v.startswith("dmt")]
    if flat_no_solo:  # a flat plan has no host lookups: the arm would be the plain variant again
        sys.exit(f"paired_steps.py: {flat_no_solo[0]!r}; expected {NO_SOLO} on a DMT variant only, "
                 f"e.g. dmt-identity+fp16{NO_SOLO}")

    work = os.path.splitext(args.out)[0]
    os.makedirs(work, exist_ok=True)
    spec = {"variants": args.variants.split(","), "reps": args.reps, "chunk": args.chunk,
            "batch": args.batch_size, "out_dir": os.path.abspath(work)}
    result = run_arms(spec, work, rate)
    if not result.ok:
        print(f"the paired run failed: logs under {work}", file=sys.stderr)
        return 1
    with open(os.path.join(work, "rank0.json")) as f:
        rows = summarize(json.load(f))
    with open(args.out, "w") as f:
        json.dump({"topology": "2x1", "unshaped": rate is None, "rate_bytes_per_s_per_rank": rate, **spec,
                   "arms": rows}, f, indent=2)
    for row in rows:
        print(f"{row['arm']:36s} wall {row['wall_ms_median']:6.2f} ms  cpu {row['cpu_ms_median']:6.2f} ms  "
              f"first/this {row['first_over_this_median']:.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]) if "LOCAL_RANK" in os.environ else main())
