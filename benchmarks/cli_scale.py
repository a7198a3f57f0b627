"""`dmt-fx plan` and `dmt-fx diff --format json` at production scale: time and where it goes.

TARGET `benchmarks/cli_scale.py:dlrm`: benchmarks/pass_speed.py's model (torchrec's DLRM, one
100 x 16 table per feature, everything on the meta device), DMT_FX_CLI_FEATURES features
(default 10,000). Per verb, one subprocess (OMP_NUM_THREADS=1) runs the CLI's main with
stage timers: import (torch, torchrec, dmt_fx), build (the target's factory: torchrec's
constructors), original_graph (diff's capture of the original), transform, report
(plan_report / graph_diff), and the rest (JSON, printing). Each stage has its wall time and
its CPU time (thread_time): on a loaded machine the CPU time is what the stage costs, the
wall time what it waited too. `--profile` runs the verb under cProfile instead (OUT/VERB.prof).

  python benchmarks/cli_scale.py --features 10000 --out /tmp/cli     # writes OUT/cli_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = os.path.join(HERE, "cli_scale.py") + ":dlrm"
FEATURES_ENV = "DMT_FX_CLI_FEATURES"
# cProfile entries (file suffix, function) -> stage; cumulative times.
STAGES = {"build": ("dmt_fx/jobs/target.py", "_call_factory"),
          "transform": ("dmt_fx/compiler/transform.py", "transform"),
          "plan_report": ("dmt_fx/cli/report.py", "plan_report"),
          "graph_diff": ("dmt_fx/cli/report.py", "graph_diff"),
          "original_graph": ("dmt_fx/cli/report.py", "original_graph"),
          "embedding_bag_init": ("torch/nn/modules/sparse.py", "__init__"),
          "normal_": ("torch/nn/init.py", "normal_"),
          "triu_indices": ("~", "<built-in method triu_indices of type object at"),
          "json_dumps": ("json/__init__.py", "dumps")}


def dlrm():
    sys.path.insert(0, HERE)
    from pass_speed import build_model

    return build_model(int(os.environ.get(FEATURES_ENV, "10000")), "meta")


def stage_times(profile: str) -> dict[str, dict[str, float]]:
    stats = pstats.Stats(profile).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    out = {}
    for stage, (suffix, name) in STAGES.items():
        hits = [(nc, ct) for (file, _, fn), (_, nc, _, ct, _) in stats.items()
                if file.endswith(suffix) and fn.startswith(name)]
        if hits:
            out[stage] = {"seconds": round(max(ct for _, ct in hits), 3), "calls": sum(nc for nc, _ in hits)}
    return out


def child(verb: str) -> None:
    """In the subprocess: the CLI's main with a wall and CPU timer around each stage."""
    start_wall, start_cpu = time.perf_counter(), time.thread_time()
    import dmt_fx.cli.diff as diff
    import dmt_fx.cli.main  # noqa: F401  (the package's `main` attribute is the function)
    cli = sys.modules["dmt_fx.cli.main"]
    import dmt_fx.cli.options as options
    import dmt_fx.cli.plan as plan
    times = {"import": [time.perf_counter() - start_wall, time.thread_time() - start_cpu]}

    def timed(owner, name, stage):
        inner = getattr(owner, name)

        def run(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                spent = times.setdefault(stage, [0.0, 0.0])
                spent[0] += time.perf_counter() - wall
                spent[1] += time.thread_time() - cpu
        setattr(owner, name, run)
    timed(options, "load_target", "build")
    timed(options, "original_graph", "original_graph")
    timed(options, "transform", "transform")
    timed(plan, "plan_report", "report")
    timed(diff, "graph_diff", "report")
    sys.stdout = open(os.devnull, "w")  # the JSON (MBs) is built and written, not shown
    code = cli.main([verb, TARGET, "--topology", "8x8", "--format", "json"])
    sys.stdout = sys.__stdout__
    times["total"] = [time.perf_counter() - start_wall, time.thread_time() - start_cpu]
    print(json.dumps({"code": code, "stages": {k: {"wall_s": round(w, 2), "cpu_s": round(c, 2)}
                                               for k, (w, c) in times.items()}}))


def measure(verb: str, features: int, out: str, profile: bool) -> dict:
    env = {**os.environ, FEATURES_ENV: str(features), "OMP_NUM_THREADS": "1"}
    if profile:
        path = os.path.join(out, f"{verb}.prof")
        command = [sys.executable, "-m", "cProfile", "-o", path, "-m", "dmt_fx.cli.main", verb, TARGET,
                   "--topology", "8x8", "--format", "json"]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return {"verb": verb, "features": features, "profiled": True, "stages": stage_times(path)}
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", verb], env=env,
                          capture_output=True, text=True)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    return {"verb": verb, "features": features, "process_wall_s": round(wall, 2),
            "process_cpu_s": round(cpu, 2), **record,
            "load_average": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, nargs="+", default=[10_000])
    parser.add_argument("--out", default="results/cli_scale")
    parser.add_argument("--profile", action="store_true", help="cProfile each verb (call counts, slower)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    os.makedirs(args.out, exist_ok=True)
    records = [measure(verb, f, args.out, args.profile) for f in args.features for verb in ("plan", "diff")]
    for r in records:
        print(json.dumps(r))
    with open(os.path.join(args.out, "cli_scale.json"), "w") as handle:
        json.dump(records, handle, indent=2)


if __name__ == "__main__":
    main()
