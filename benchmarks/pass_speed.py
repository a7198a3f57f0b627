"""Pass speed: time and peak memory of dmt_fx.transform, per stage, against the number of features.

Model: torchrec's own `DLRM` (torchrec.models.dlrm), one table per feature (100 rows x 16),
dense arch [32, 16], over arch [32, 1], all on the meta device by default (nothing is
allocated; the over arch alone is F(F+1)/2 x 32 weights).
Each size runs in its own subprocess, so the peak resident memory (ru_maxrss) is that size's
alone. Stages: capture (trace + state copy), analyses (embedding sites, interaction),
partition (the partitioner and the plan it builds, validate_plan for a given plan), plan
(tower specs and the DMTResult record), passes (the graph passes, recompiles included),
verify (eager comparison; only with --example-inputs), other (the rest of transform).
Peak memory: `rss_peak_mb` (the process, model included) and `tracemalloc_peak_mb` (Python
allocations during a second transform run under tracemalloc; --no-tracemalloc skips it).

  python benchmarks/pass_speed.py                                  # 1,000..50,000 features, 8x8
  python benchmarks/pass_speed.py --features 1000 10000 --out /tmp/ps  # two sizes
  python benchmarks/pass_speed.py --features 50000 --model concat       # no InteractionArch
writes OUT/pass_speed.json and OUT/pass_speed.png (time per stage against F, log-log).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from contextlib import contextmanager

STAGES = ("capture", "analyses", "partition", "plan", "passes", "verify")


def build_model(num_features: int, device: str, form: str = "dlrm"):
    """torchrec's DLRM (`form` "dlrm"), or "concat": the same tables, the pooled embeddings and
    the dense features concatenated into an MLP (no InteractionArch, whose F x F index buffer
    does not fit at 50,000 features: 8 F (F + 1) bytes on the CPU whatever the device)."""
    import torch
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    from torchrec.models.dlrm import DLRM

    tables = [EmbeddingBagConfig(name=f"t{i}", embedding_dim=16, num_embeddings=100, feature_names=[f"f{i}"])
              for i in range(num_features)]
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device(device))
    if form == "concat":
        return _concat(ebc, 16 * num_features + 13, torch.device(device))
    # dense on the same device: DLRM's pairwise interaction makes the over arch's input
    # F(F+1)/2 + 16 wide (6.4 GB of weights at 10,000 features on the CPU)
    return DLRM(embedding_bag_collection=ebc, dense_in_features=13, dense_arch_layer_sizes=[32, 16],
                over_arch_layer_sizes=[32, 1], dense_device=torch.device(device))


def _concat(ebc, width: int, device):
    import torch
    import torch.nn as nn

    class ConcatModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ebc = ebc
            self.over = nn.Sequential(nn.Linear(width, 32, device=device), nn.ReLU(), nn.Linear(32, 1, device=device))

        def forward(self, dense, kjt):
            return self.over(torch.cat([dense, self.ebc(kjt).values()], dim=1))
    return ConcatModel()


@contextmanager
def stage_timers(seconds: dict[str, float]):
    """Wrap the stage functions transform() calls (by module attribute) to time each stage."""
    from dmt_fx.compiler import transform as tr

    wrapped = {"capture": "capture", "_copy_unused_state": "capture", "analyze": "analyses",
               "_make_plan": "partition", "tower_specs": "plan", "run_passes": "passes", "_verify": "verify"}
    originals = {name: getattr(tr, name) for name in wrapped}
    result_of = tr.DMTResult.__dict__["of"]

    def timed(fn, stage):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start
        return run

    for name, stage in wrapped.items():
        setattr(tr, name, timed(originals[name], stage))
    tr.DMTResult.of = staticmethod(timed(tr.DMTResult.of, "plan"))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(tr, name, fn)
        tr.DMTResult.of = result_of


def measure_one(num_features: int, topology: str, device: str, plan: str | None, use_tracemalloc: bool,
                form: str = "dlrm") -> dict:
    """One size, in this process: build, transform once timed, once under tracemalloc."""
    import dmt_fx
    from dmt_fx.jobs.meta_build import skip_meta_init

    start = time.perf_counter()
    with skip_meta_init():  # as `dmt-fx` builds a TARGET: meta tables are not initialised
        model = build_model(num_features, device, form)
    build_s = time.perf_counter() - start
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds: dict[str, float] = {}
    with stage_timers(seconds):
        start, cpu = time.perf_counter(), time.process_time()
        gm = dmt_fx.transform(model, topology, plan=plan)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
    record = {"num_features": num_features, "topology": topology, "device": device, "plan": plan, "model": form,
              "build_model_s": round(build_s, 3), "transform_s": round(total, 3),
              "transform_cpu_s": round(cpu, 3),  # what the stage costs on a machine shared with others
              "stages_s": {s: round(seconds.get(s, 0.0), 3) for s in STAGES},
              "num_nodes": len(gm.graph.nodes), "towers": len(dmt_fx.dmt_result(gm).plan.towers)}
    record["stages_s"]["other"] = round(total - sum(seconds.values()), 3)
    record["rss_before_transform_mb"] = round(rss_before, 1)
    record["rss_peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    del gm
    if use_tracemalloc:
        tracemalloc.start()
        dmt_fx.transform(model, topology, plan=plan)
        record["tracemalloc_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        tracemalloc.stop()
    return record


def measure(num_features: int, args: argparse.Namespace) -> dict:
    """One size in a fresh subprocess (its ru_maxrss is its own)."""
    cmd = [sys.executable, __file__, "--child", str(num_features), "--topology", args.topology,
           "--device", args.device, "--model", args.model] + (["--plan", args.plan] if args.plan else []) + (
           [] if args.tracemalloc else ["--no-tracemalloc"])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["num_features"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [r["transform_s"] for r in records], "ko-", label="transform (total)")
    for stage in STAGES + ("other",):
        ys = [r["stages_s"][stage] for r in records]
        if any(ys):
            ax.plot(xs, [max(y, 1e-3) for y in ys], ".--", label=stage)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("features (one table each)")
    ax.set_ylabel("seconds")
    ax.set_title(f"dmt_fx transform per stage ({records[0]['topology']}, CPU)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, nargs="+", default=[1000, 2000, 5000, 10000, 20000, 50000])
    parser.add_argument("--topology", default="8x8")
    parser.add_argument("--device", default="meta", help="where the tables live (meta: nothing allocated)")
    parser.add_argument("--plan", default=None, help="e.g. 'auto' to time plan='auto'")
    parser.add_argument("--no-tracemalloc", dest="tracemalloc", action="store_false")
    parser.add_argument("--model", choices=("dlrm", "concat"), default="dlrm",
                        help="concat: no pairwise interaction (fits at 50,000 features; see build_model)")
    parser.add_argument("--out", default="results")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure_one(args.child, args.topology, args.device, args.plan, args.tracemalloc,
                                     args.model)))
        return
    os.makedirs(args.out, exist_ok=True)
    records = []
    for n in args.features:
        records.append(measure(n, args))
        print(json.dumps(records[-1]), flush=True)
    with open(os.path.join(args.out, "pass_speed.json"), "w") as handle:
        json.dump(records, handle, indent=2)
    plot(records, os.path.join(args.out, "pass_speed.png"))
    print(f"wrote {args.out}/pass_speed.json and {args.out}/pass_speed.png")


if __name__ == "__main__":
    main()
