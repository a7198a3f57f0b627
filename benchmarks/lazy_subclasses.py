"""What the lazy KJT / KeyedTensor subclasses (dmt_fx/_compat/torchrec_lazy.py) buy in one process.

    python benchmarks/lazy_subclasses.py [--steps 300] [--batch-size 128] [--out results/lazy_subclasses.json]

They override private TorchRec fields, so each must pay for itself (docs/compat.md). The
identity DMT model of the built-in DLRM (topology 2x2, validate_inputs=False) runs one training
step (forward + backward) with each of them replaced by its eager form, which returns the same
values: `kjt.permute` for the tower KJT (tower_features), an eager KeyedTensor for the merge
(merged_keyed_tensor), TorchRec's own forward for the tower collections (no pool_in_process).
The original model is measured alongside. Reported per variant: aten/fbgemm ops per step (what load cannot blur) and the median step
time in CPU time of the thread (one intra-op thread; interleaved blocks of 10 steps), which on
a shared machine is still blurred by load: say the load when you quote it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections import Counter

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dmt_fx  # noqa: E402
from dmt_fx._compat import TorchDispatchMode  # noqa: E402
from dmt_fx._compat.torchrec_lazy import _blocks  # noqa: E402
from dmt_fx.ir import ops  # noqa: E402
from dmt_fx.models import zoo  # noqa: E402


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def eager_tower_features(kjt, indices, keys):
    return kjt.permute(list(indices))


def eager_merged_keyed_tensor(parts, keys, length_per_key, blocks):
    pieces = _blocks(parts, blocks)
    return KeyedTensor(keys=keys, length_per_key=length_per_key,
                       values=torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0])


EAGER = {"tower_features": eager_tower_features, "merged_keyed_tensor": eager_merged_keyed_tensor,
         "pool_in_process": lambda collection: collection}
VARIANTS = {"lazy (as shipped)": (), "eager tower KJT": ("tower_features",), "eager merge": ("merged_keyed_tensor",),
            "eager pooled columns": ("pool_in_process",), "all eager": tuple(EAGER)}


class Installed:
    """ops.py's functions replaced by the variant's eager forms while the block runs."""

    def __init__(self, names) -> None:
        self.names = names

    def __enter__(self) -> None:
        self.saved = {n: getattr(ops, n) for n in self.names}
        for n in self.names:
            setattr(ops, n, EAGER[n])

    def __exit__(self, *exc) -> None:
        for n, f in self.saved.items():
            setattr(ops, n, f)


def fresh(batch):
    return [KeyedJaggedTensor.from_lengths_sync(keys=x.keys(), values=x.values(), lengths=x.lengths())
            if isinstance(x, KeyedJaggedTensor) else x for x in batch]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, example = zoo.default_dlrm()
    batch = zoo.make_inputs(args.batch_size, 3)
    model(*fresh(batch)).sum().backward()
    with OpCounter() as counted:
        model(*fresh(batch)).sum().backward()
    models = {"original model": (model, (), sum(counted.ops.values()))}
    for name, names in VARIANTS.items():
        with Installed(names):  # pool_in_process is called by the pass, the others by the graph
            dmt = dmt_fx.transform(copy.deepcopy(model), "2x2", example_inputs=example, validate_inputs=False)
            assert torch.equal(dmt(*fresh(batch)), model(*fresh(batch))), name
            dmt(*fresh(batch)).sum().backward()  # the first backward makes every .grad
            with OpCounter() as counted:
                dmt(*fresh(batch)).sum().backward()
        models[name] = (dmt, names, sum(counted.ops.values()))
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(max(1, args.steps // 10)):
        for name, (dmt, names, _) in models.items():
            with Installed(names):
                for _ in range(10):
                    inputs = fresh(batch)
                    start = time.thread_time_ns()
                    dmt(*inputs).sum().backward()
                    times[name].append((time.thread_time_ns() - start) / 1e3)
    result = {"batch_size": args.batch_size, "steps": args.steps, "load_average": os.getloadavg()[0],
              "variants": {name: {"ops_per_step": n_ops, "median_cpu_us": round(statistics.median(times[name]))}
                           for name, (_, _, n_ops) in models.items()}}
    for name, row in result["variants"].items():
        print(f"{name:22s} {row['ops_per_step']:4d} ops/step  median {row['median_cpu_us']:6d} us/step (thread CPU)")
    print(f"load average {result['load_average']:.1f}")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
