"""GPU check: the single-GPU path, and flat against DMT on one GPU.

    python benchmarks/gpu_check.py --out results/gpu [--batch-sizes 4096,65536] [--steps 30]

Part 1, one process on cuda:0, no process group: the built-in model (`dmt_fx.models.zoo`)
and its DMT transforms (same weights). Identity tower modules: max |diff| of the outputs
and of every parameter gradient against the original on the GPU. Then training steps
(forward, backward, SGD) timed for the original, DMT identity and DMT with linear tower
modules at c = 4, in interleaved blocks (ABCCBA...), CUDA-synchronised, medians.

Part 2, `distribute` in an NCCL world of one rank (this process is rank 0 of world 1):
the identity DMT model trained 3 steps next to the original on the GPU (losses compared),
then step times of TorchRec's flat table-wise DMP against distributed DMT identity and c = 4.

Each part records what ran, and where it failed the error and its traceback: nothing is
hidden. Writes OUT/gpu_check.json. On a machine without CUDA both parts run on the CPU, part 2 on
gloo: a dry run of the script itself.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import traceback
import warnings
from typing import Any, Callable

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dmt_fx  # noqa: E402
from dmt_fx.ir.topology import Topology  # noqa: E402
from dmt_fx.jobs.data import clicks  # noqa: E402
from dmt_fx.models import zoo  # noqa: E402


def to_device(inputs: Any, device: torch.device) -> Any:
    """Every tensor and KeyedJaggedTensor of `inputs` on `device`."""
    def move(x: Any) -> Any:
        return x.to(device) if hasattr(x, "to") and not isinstance(x, (int, float, str)) else x
    return pytree.tree_map(move, inputs, is_leaf=lambda x: type(x).__name__ == "KeyedJaggedTensor")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_fn(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[tuple, torch.Tensor], float]:
    def step(inputs: tuple, y: torch.Tensor) -> float:
        loss = F.binary_cross_entropy_with_logits(model(*inputs), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss
    return step


def timed_blocks(steps: dict[str, Callable], batches: list, device: torch.device, *, blocks: int,
                 per_block: int) -> dict[str, dict[str, float]]:
    """Interleaved blocks (forward order, then reversed), CUDA-synchronised; medians in ms."""
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    for b in range(blocks):
        for name in (names if b % 2 == 0 else names[::-1]):
            for i in range(per_block):
                inputs, y = batches[(b * per_block + i) % len(batches)]
                sync(device)
                start = time.perf_counter()
                steps[name](inputs, y)
                sync(device)
                times[name].append(time.perf_counter() - start)
    out = {n: {"median_ms": 1e3 * statistics.median(t), "steps": len(t)} for n, t in times.items()}
    base = out[names[0]]["median_ms"]
    for n in names:
        out[n]["speedup_vs_" + names[0]] = base / out[n]["median_ms"]
    return out


def host_syncs(step: Callable, inputs: tuple, y: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """The GPU -> host synchronisations of one training step: CUDA's sync debug mode warns at
    each (a read back such as .tolist() or .item(), a blocking copy); counted, with the first
    source line of each warning's stack in this project, TorchRec or FBGEMM."""
    if device.type != "cuda":
        return {"count": None, "why": "no CUDA"}
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(inputs, y)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    return {"count": len(syncs), "where": [f"{os.path.basename(w.filename)}:{w.lineno}" for w in syncs][:40]}


def refusal_of_bad_id(gm: torch.nn.Module, inputs: tuple) -> dict[str, Any]:
    """The DMT model given one id past its table on the device: the validator's clear error
    (its device path compares on the GPU), not a device-side assert."""
    dense, kjt = inputs
    values = kjt.values().clone()
    values[0] = 1 << 30
    bad = type(kjt).from_lengths_sync(keys=kjt.keys(), values=values, lengths=kjt.lengths())
    try:
        gm(dense, bad)
    except Exception as exc:  # noqa: BLE001 - what the user would see is the result
        return {"error": type(exc).__name__, "message": str(exc).splitlines()[0][:300]}
    return {"error": None, "message": "accepted: a wrong answer"}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def param_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Gradients by state-dict key: the DMT model keeps the original's keys."""
    return {k: v.grad for k, v in model.state_dict(keep_vars=True).items()
            if isinstance(v, torch.nn.Parameter) and v.grad is not None}


def part1(device: torch.device, args: argparse.Namespace, record: dict[str, Any]) -> None:
    """Single process: transform, equivalence on the device, timing."""
    topology = Topology.parse(args.topology)
    model, example = zoo.default_dlrm(0)
    original = copy.deepcopy(model).to(device)
    ran = record.setdefault("ran", [])
    try:  # trace with inputs on the device, as a GPU user would
        gm = dmt_fx.transform(copy.deepcopy(model).to(device), topology, example_inputs=to_device(example, device))
        ran.append(f"transform on {device.type} (identity)")
    except Exception as exc:  # noqa: BLE001 - recorded, then the CPU route is tried
        record["transform_on_device_error"] = f"{type(exc).__name__}: {exc}"
        gm = dmt_fx.transform(copy.deepcopy(model), topology, example_inputs=example).to(device)
        ran.append(f"transform on cpu, then .to({device.type}) (identity)")
    inputs = to_device(zoo.make_inputs(args.check_batch, 1), device)
    y = clicks(zoo.make_inputs(args.check_batch, 1), 1).to(device)
    outs = []
    for m in (original, gm):
        m.zero_grad()
        out = m(*inputs)
        F.binary_cross_entropy_with_logits(out, y).backward()
        outs.append(out.detach())
    grads_a, grads_b = param_grads(original), param_grads(gm)  # by the original's state-dict keys
    record["equivalence"] = {
        "batch": args.check_batch,
        "max_abs_output_diff": max_diff(outs[0], outs[1]),
        "max_abs_grad_diff": max((max_diff(grads_a[n], grads_b[n]) for n in grads_a if n in grads_b), default=0.0),
        "grads_compared": sum(n in grads_b for n in grads_a),
        "grads_in_original": len(grads_a),
    }
    ran.append("identity equivalence on device")
    record["bad_id_on_device"] = refusal_of_bad_id(gm, inputs)
    ran.append("a batch with an out-of-range id on the device")
    torch.manual_seed(0)
    c4 = dmt_fx.transform(copy.deepcopy(model), topology, example_inputs=example, tower_module="linear",
                          compression=4).to(device)
    ran.append("transform with linear tower modules, c = 4")
    models = {"original": original, "dmt-identity": gm, "dmt-c4": c4}
    steps = {n: step_fn(m, torch.optim.SGD(m.parameters(), lr=0.05)) for n, m in models.items()}
    record["timing"] = {}
    for batch in args.batch_sizes:
        batches = [(to_device(zoo.make_inputs(batch, s), device), clicks(zoo.make_inputs(batch, s), s).to(device))
                   for s in range(4)]
        for fn in steps.values():  # warm-up: kernels, allocator
            for inputs_, y_ in batches[:2]:
                fn(inputs_, y_)
        record["timing"][str(batch)] = timed_blocks(steps, batches, device, blocks=args.blocks,
                                                    per_block=args.steps)
        ran.append(f"timing at batch {batch}")


def part2(device: torch.device, args: argparse.Namespace, record: dict[str, Any]) -> None:
    """`distribute` in an NCCL world of one rank: equality with the original, then timing."""
    import torch.distributed as dist

    from dmt_fx.baselines import build_baseline

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    backend = "nccl" if device.type == "cuda" else "gloo"  # gloo: the CPU dry run of this part
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=0, world_size=1)
    ran = record.setdefault("ran", [])
    ran.append(f"{backend} world of 1 rank")
    topology = Topology.parse("1x1")
    model, example = zoo.default_dlrm(0)
    original = copy.deepcopy(model).to(device)
    opt_ref = torch.optim.SGD(original.parameters(), lr=0.05)
    gm = dmt_fx.transform(copy.deepcopy(model), topology, example_inputs=example)
    dmt, opt = dmt_fx.distribute(gm, optimizer_class=torch.optim.SGD, optimizer_kwargs={"lr": 0.05})
    ran.append(f"distribute (identity) on {backend}")
    losses = []
    for s in range(3):
        inputs = to_device(zoo.make_inputs(args.check_batch, s), device)
        y = clicks(zoo.make_inputs(args.check_batch, s), s).to(device)
        a = step_fn(original, opt_ref)(inputs, y)
        b = step_fn(dmt, opt)(inputs, y)
        losses.append([float(a), float(b)])
    record["distributed_losses_original_vs_dmt"] = losses
    record["distributed_max_abs_loss_diff"] = max(abs(a - b) for a, b in losses)
    ran.append("3 distributed training steps compared")
    variants: dict[str, Callable] = {}
    for name in ("flat-table_wise", "dmt-identity", "dmt-c4"):
        m, _ = zoo.default_dlrm(0)
        if name.startswith("flat"):
            module, optimizer = build_baseline(name, m, topology=topology, optimizer_class=torch.optim.SGD,
                                               optimizer_kwargs={"lr": 0.05})
        else:
            torch.manual_seed(0)
            kw = {"tower_module": "linear", "compression": 4} if name == "dmt-c4" else {}
            g = dmt_fx.transform(m, topology, example_inputs=example, **kw)
            module, optimizer = dmt_fx.distribute(g, optimizer_class=torch.optim.SGD,
                                                  optimizer_kwargs={"lr": 0.05})
        variants[name] = step_fn(module, optimizer)
        ran.append(f"built {name} on {backend}")
    record["distributed_timing"] = {}
    for batch in args.batch_sizes:
        batches = [(to_device(zoo.make_inputs(batch, s), device), clicks(zoo.make_inputs(batch, s), s).to(device))
                   for s in range(4)]
        for fn in variants.values():
            for inputs_, y_ in batches[:2]:
                fn(inputs_, y_)
        record["distributed_timing"][str(batch)] = timed_blocks(variants, batches, device, blocks=args.blocks,
                                                                per_block=args.steps)
        record.setdefault("host_syncs_per_step", {})[str(batch)] = {
            name: host_syncs(fn, *batches[0], device) for name, fn in variants.items()}
        ran.append(f"distributed timing at batch {batch}")
    dist.destroy_process_group()


def run_part(name: str, fn: Callable, *a: Any) -> dict[str, Any]:
    record: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        fn(*a, record)
        record["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - the check records what failed and goes on
        record["status"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        record["traceback"] = traceback.format_exc()[-4000:]
    record["wall_s"] = time.perf_counter() - start
    print(f"{name}: {record['status']} ({record['wall_s']:.0f} s) {record.get('error', '')[:300]}", flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/gpu")
    p.add_argument("--topology", default="2x2", help="the topology the single-process transform plans for")
    p.add_argument("--batch-sizes", type=lambda t: [int(x) for x in t.split(",")], default=[4096, 65536])
    p.add_argument("--check-batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=10, help="steps per block")
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--port", type=int, default=29533)
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)",
        "torch": torch.__version__,
        "versions": {m: getattr(sys.modules.get(m), "__version__", None) for m in ("torchrec", "fbgemm_gpu")},
        "args": vars(args),
    }
    for module in ("torchrec", "fbgemm_gpu"):
        try:
            result["versions"][module] = getattr(__import__(module), "__version__", "imported")
        except Exception as exc:  # noqa: BLE001
            result["versions"][module] = f"import failed: {exc}"
    result["single_process"] = run_part("part 1 (single process)", part1, device, args)
    result["nccl_world_of_one" if cuda else "gloo_world_of_one"] = run_part("part 2 (world of one)", part2, device, args)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as handle:
        json.dump(result, handle, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "args"}, indent=1, default=str)[:6000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
