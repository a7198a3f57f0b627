"""`dmt-fx plan` and `dmt-fx diff --format json` at production scale: wall time and where it goes.

TARGET `benchmarks/cli_scale.py:dlrm`: benchmarks/pass_speed.py's model (torchrec's DLRM, one
100 x 16 table per feature, everything on the meta device), DMT_FX_CLI_FEATURES features
(default 10,000). Per verb, one subprocess runs the CLI under cProfile; the record splits its
time into import (torch, torchrec, dmt_fx), build (the target's factory: torchrec's
constructors), transform, and report (plan_report / graph_diff, JSON included), and counts
the calls of the hot functions.

  python benchmarks/cli_scale.py --features 10000 --out /tmp/cli     # writes OUT/cli_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
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


def measure(verb: list[str], features: int, out: str) -> dict:
    profile = os.path.join(out, f"{verb[0]}.prof")
    command = [sys.executable, "-m", "cProfile", "-o", profile, "-m", "dmt_fx.cli.main", *verb, TARGET,
               "--topology", "8x8", "--format", "json"]
    start = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, FEATURES_ENV: str(features)}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    return {"verb": " ".join(verb), "features": features, "wall_s": round(wall, 2),
            "json_chars": len(done.stdout), "stages": stage_times(profile), "load_average": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, nargs="+", default=[10_000])
    parser.add_argument("--out", default="results/cli_scale")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    records = [measure(verb, f, args.out) for f in args.features for verb in (["plan"], ["diff"])]
    for r in records:
        print(json.dumps(r))
    with open(os.path.join(args.out, "cli_scale.json"), "w") as handle:
        json.dump(records, handle, indent=2)


if __name__ == "__main__":
    main()
