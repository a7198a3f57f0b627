"""Single-process overhead of the identity DMT model vs the original (forward + backward + SGD).

    python benchmarks/overhead.py [--target dmt_fx.models.zoo:default_dlrm] [--topology 2x2]
                                  [--steps 200] [--block 10] [--batch-sizes 128,1024]
                                  [--no-validate --out results/overhead_novalidate.json]

The original model A and its identity DMT transform B (`dmt_fx.transform`, same weights)
train on the same pre-built batches in one process, one thread. Every step gets a fresh
KeyedJaggedTensor (rebuilt from the batch's ids and lengths with from_lengths_sync, as a
data loader makes them, outside the timed region): a KJT caches its per-key split the first
time a model reads it, so cycling the same KJT objects let the original model skip that
work on every later step while the DMT model, whose per-tower KJTs are new each step,
could not (this made the overhead look about 4 points larger, at batch 128 and 1024).
The measurements are interleaved in blocks (A block, B block, B block, A block, ...: ABBA, so drift hits both
alike), `steps` timed steps each after a warm-up. Reported: per-model median and IQR of
the step time, the ratio of medians, and the median of the per-block-pair ratios with its
IQR. The target: overhead <= 3 %. Writes results/overhead.json.

`validation` records how the DMT model checks each batch: 'lookups' (the default in one
process on the CPU: id ranges left to the lookups, which refuse a bad id, the rest up
front), 'full', or 'off' (--no-validate).

Each step is also timed in CPU time of the thread (`time.thread_time`, one intra-op thread):
on a shared machine the wall time of a step includes the time the process waits for a core
(with other jobs running, its IQR here was half its median), CPU time does not. Reported
beside the wall figures as `cpu_models`, `cpu_ratio_of_medians` and `cpu_overhead_pct`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dmt_fx  # noqa: E402
from dmt_fx._compat import graph_module_call  # noqa: E402
from dmt_fx.compiler.validation import LookupGuard  # noqa: E402
from dmt_fx.ir.topology import Topology  # noqa: E402
from dmt_fx.jobs.data import clicks  # noqa: E402
from dmt_fx.jobs.summary import quartiles  # noqa: E402
from dmt_fx.jobs.target import load_target, target_module  # noqa: E402
from dmt_fx.models.zoo import DEFAULT_TARGET  # noqa: E402


def fresh_inputs(inputs: tuple) -> tuple:
    """The batch with every KeyedJaggedTensor rebuilt without caches (what a loader yields)."""
    return tuple(KeyedJaggedTensor.from_lengths_sync(keys=x.keys(), values=x.values(), lengths=x.lengths(),
                                                      weights=x.weights_or_none())
                 if isinstance(x, KeyedJaggedTensor) else x for x in inputs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--topology", default="2x2")
    p.add_argument("--steps", type=int, default=200, help="timed steps per model")
    p.add_argument("--block", type=int, default=10, help="steps per interleaved block")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batch-sizes", type=lambda t: [int(x) for x in t.split(",")], default=[128, 1024],
                   help="local batch sizes, each measured separately (default 128,1024)")
    p.add_argument("--batches", type=int, default=16, help="distinct pre-built batches, cycled")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-validate", action="store_true",
                   help="transform with validate_inputs=False: the difference to a default run is the "
                        "cost of run-time input validation")
    p.add_argument("--out", default="results/overhead.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    results = [measure(args, batch) for batch in args.batch_sizes]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(results[0] if len(results) == 1 else {"by_batch_size": results}, handle, indent=2)
    print(f"-> {args.out}")
    return 0


def validation_of(dmt) -> str:
    """How the DMT model checks a batch: 'off', 'full' (every check up front) or 'lookups' (id
    ranges left to the lookups under LookupGuard, the rest up front)."""
    validator = getattr(dmt, "dmt_input_validator", None)
    if validator is None:
        return "off"
    guarded = isinstance(graph_module_call(type(dmt)), LookupGuard)
    return "lookups" if guarded and any(validator.lookups_check_ids) else "full"


class Stepper:
    """One training step of either model on the next pre-built batch (fresh KJTs), timed."""

    def __init__(self, args, batch_size: int) -> None:
        model, example = load_target(args.target)
        module, _ = target_module(args.target)
        dmt = dmt_fx.transform(copy.deepcopy(model), Topology.parse(args.topology), example_inputs=example,
                               validate_inputs=not args.no_validate)
        self.batches = [module.make_inputs(batch_size, 1000 + i) for i in range(args.batches)]
        self.labels = [clicks(b, 1000 + i) for i, b in enumerate(self.batches)]
        self.models = {"original": copy.deepcopy(model), "dmt-identity": dmt}
        self.optims = {k: torch.optim.SGD(m.parameters(), lr=0.01) for k, m in self.models.items()}
        self.counter = {k: 0 for k in self.models}
        self.validation = validation_of(dmt)

    def __call__(self, name: str) -> tuple[float, float]:
        i = self.counter[name] % len(self.batches)
        self.counter[name] += 1
        model, opt = self.models[name], self.optims[name]
        batch = fresh_inputs(self.batches[i])
        start, cpu = time.perf_counter(), time.thread_time()
        out = model(*batch)
        loss = F.binary_cross_entropy_with_logits(out, self.labels[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - start, time.thread_time() - cpu


def interleaved(step: Stepper, args) -> tuple[dict[str, list[float]], list[float], float, dict[str, list[float]]]:
    """Warm-up, then ABBA blocks; (step times per model, per-block-pair ratios dmt / original, wall s,
    CPU times per model)."""
    for _ in range(args.warmup):
        for name in step.models:
            step(name)
    times = {k: [] for k in step.models}
    cpu = {k: [] for k in step.models}
    block_medians = {k: [] for k in step.models}
    start = time.monotonic()
    for b in range(max(1, args.steps // args.block)):
        order = ["original", "dmt-identity"] if b % 2 == 0 else ["dmt-identity", "original"]
        for name in order:
            block, block_cpu = zip(*[step(name) for _ in range(args.block)])
            times[name].extend(block)
            cpu[name].extend(block_cpu)
            block_medians[name].append(statistics.median(block))
    ratios = [d / o for o, d in zip(block_medians["original"], block_medians["dmt-identity"])]
    return times, ratios, time.monotonic() - start, cpu


def model_summary(xs: list[float]) -> dict[str, float]:
    q1, med, q3 = quartiles(xs)
    return {"median_s": med, "q1_s": q1, "q3_s": q3, "iqr_s": q3 - q1, "p10_s": statistics.quantiles(xs, n=10)[0],
            "min_s": min(xs), "steps": len(xs)}


def measure(args, batch_size: int) -> dict:
    stepper = Stepper(args, batch_size)
    times, ratios, wall, cpu = interleaved(stepper, args)
    cpu_summary = {name: model_summary(xs) for name, xs in cpu.items()}
    cpu_ratio = cpu_summary["dmt-identity"]["median_s"] / cpu_summary["original"]["median_s"]
    summary = {name: model_summary(xs) for name, xs in times.items()}
    dmt, original = summary["dmt-identity"], summary["original"]
    r1, rmed, r3 = quartiles(ratios)
    result = {
        "what": "single-process training step (forward, BCE loss, backward, SGD step), original model vs "
                "its identity DMT transform, interleaved ABBA blocks",
        "target": args.target, "topology": args.topology, "batch_size": batch_size, "threads": args.threads,
        "steps_per_model": len(times["original"]), "block": args.block, "warmup": args.warmup,
        "models": summary,
        "ratio_of_medians": dmt["median_s"] / original["median_s"],
        "block_ratio_median": rmed, "block_ratio_q1": r1, "block_ratio_q3": r3,
        "overhead_pct": (dmt["median_s"] / original["median_s"] - 1) * 100,
        # the fastest steps are the least disturbed by other jobs on a shared machine
        "ratio_of_p10": dmt["p10_s"] / original["p10_s"],
        "ratio_of_min": dmt["min_s"] / original["min_s"],
        "cpu_models": cpu_summary,
        "cpu_ratio_of_medians": cpu_ratio,
        "cpu_overhead_pct": (cpu_ratio - 1) * 100,
        "load_average_1min": os.getloadavg()[0],
        "validation": stepper.validation,
        "target_overhead_pct": 3.0,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
        "wall_s": wall,
    }
    print_result(result)
    return result


def print_result(result: dict) -> None:
    print(f"local batch {result['batch_size']}:")
    for name, s in result["models"].items():
        print(f"{name:>13}: median {s['median_s'] * 1e3:.3f} ms  IQR {s['iqr_s'] * 1e3:.3f} ms  "
              f"p10 {s['p10_s'] * 1e3:.3f} ms  min {s['min_s'] * 1e3:.3f} ms  ({s['steps']} steps)")
    print(f"dmt-identity / original: {result['ratio_of_medians']:.4f} (overhead {result['overhead_pct']:+.2f} %, "
          f"target <= 3 %); per-block ratio median {result['block_ratio_median']:.4f} [IQR "
          f"{result['block_ratio_q1']:.4f} - {result['block_ratio_q3']:.4f}]; ratio of p10 "
          f"{result['ratio_of_p10']:.4f}, of min {result['ratio_of_min']:.4f}; load avg "
          f"{result['load_average_1min']:.1f}; {result['wall_s']:.1f} s")
    cpu = result["cpu_models"]
    print(f"  CPU time of the thread: original {cpu['original']['median_s'] * 1e3:.3f} ms, dmt-identity "
          f"{cpu['dmt-identity']['median_s'] * 1e3:.3f} ms: overhead {result['cpu_overhead_pct']:+.2f} %")


if __name__ == "__main__":
    sys.exit(main())
