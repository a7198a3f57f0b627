"""What a measured speedup of `bench emulated` follows here: the bytes, or the CPU.

    python benchmarks/cpu_bound.py benchmarks/recorded/cost_sweep.json [results/emulated.json ...]
                                   [--out results/cpu_bound.json] [--png results/cpu_bound.png]

Input: `dmt-fx bench emulated` reports (emulated.json) and cost sweeps (cost_sweep.json,
`benchmarks/cost_sweep.py`: one report per point). For every row that is not the best flat
plan of its run, three speedups against that best flat plan:

    measured  T_flat / T_variant                       (median step times, slowest rank)
    bytes     T_flat / (T_flat - wire_flat + wire_var)  (the ideal: cross-host bytes at the rate)
    cpu       CPU_flat / CPU_variant                   (process CPU per step, slowest rank)

and how busy the job kept the machine's cores (`busy`: ranks x CPU of the slowest rank /
(cores x step); an upper bound of `cpu_busy_share`, which older reports lack). Reported:
the mean absolute relative error of each predictor against the measured speedups, the
correlation of their logarithms, and, for DMT identity and c = 4, the runs that met the
project's targets (1.0x, 1.5x). Writes JSON and a two-panel scatter plot.

Why it matters: with no delay on the emulated links (no netem on this kernel) and 4 ranks
on 2 cores, a step is mostly the CPU's; the better predictor tells which one the ratio
measures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from typing import Any, Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dmt_fx.bench.breakdown_plot import add_cpu_bound, add_ideal_speedups  # noqa: E402
from dmt_fx.bench.emulated import best_flat  # noqa: E402

TARGETS = {"dmt-identity": 1.0, "dmt-c4": 1.5}


def runs_of(path: str) -> Iterator[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """(label, run facts, records) per run in an emulated.json or a cost_sweep.json."""
    with open(path) as handle:
        data = json.load(handle)
    if "points" in data:
        for p in data["points"]:
            label = f"{path}:{p['topology']}-{p['rate']}-b{p['batch_size']}"
            yield label, {"load_1min": p.get("load_1min"), "cores": data.get("cores", 2)}, p["records"]
    else:
        yield path, {"cores": (data["records"][0].get("machine_cores") or 2)}, data["records"]


def rows_of(label: str, facts: dict[str, Any], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The three speedups of every row of one run against its best flat plan, by the bench's own
    rules (`best_flat`, `add_ideal_speedups`, `add_cpu_bound`: older records lack their fields)."""
    unpipelined = [dict(r) for r in records if not r.get("pipelined")]
    marked = best_flat(unpipelined)
    best = next((r for r in marked if r["is_best_flat"]), None)
    if best is None:
        return []
    add_cpu_bound(add_ideal_speedups(marked, best["inter_host_rate_bytes_per_s"]), facts["cores"])
    return [{"run": label, "variant": r["variant"], "topology": r["topology"], "batch_size": r.get("batch_size"),
             "measured": r["speedup_vs_best_flat"], "bytes": r["ideal_speedup_vs_best_flat"],
             "cpu": r["cpu_speedup_vs_best_flat"],
             # ranks x the slowest rank's CPU: an upper bound of cpu_busy_share, which older records lack
             "busy": r["ranks"] * r["step_cpu_median_s"] / (facts["cores"] * r["step_time_median_s"]),
             "load_1min": facts.get("load_1min")}
            for r in marked if r is not best and r["speedup_vs_best_flat"] and r["cpu_speedup_vs_best_flat"]]


def mean_error(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.fmean(abs(r[key] - r["measured"]) / r["measured"] for r in rows)


def log_correlation(rows: list[dict[str, Any]], key: str) -> float:
    xs, ys = [math.log(r[key]) for r in rows], [math.log(r["measured"]) for r in rows]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    num = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    den = math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))
    return num / den if den else float("nan")


def targets(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per DMT variant of the targets: runs, how many met it, the median of each speedup."""
    out = {}
    for variant, goal in TARGETS.items():
        mine = [r for r in rows if r["variant"] == variant]
        if mine:
            out[variant] = {"target": goal, "runs": len(mine), "met": sum(r["measured"] >= goal for r in mine),
                            **{f"median_{k}": statistics.median(r[k] for r in mine) for k in ("measured", "bytes", "cpu")}}
    return out


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
    for ax, key, name in ((axes[0], "bytes", "ideal from bytes"), (axes[1], "cpu", "CPU ratio")):
        for variant, color in (("dmt-identity", "tab:orange"), ("dmt-c4", "tab:red"), ("dmt-c2", "tab:pink")):
            mine = [r for r in rows if r["variant"] == variant]
            ax.scatter([r[key] for r in mine], [r["measured"] for r in mine], label=variant, color=color, s=18)
        others = [r for r in rows if not r["variant"].startswith("dmt")]
        ax.scatter([r[key] for r in others], [r["measured"] for r in others], label="other flat / 2D", color="tab:blue",
                   s=12)
        ax.plot([0.2, 2.2], [0.2, 2.2], color="gray", linewidth=0.8)
        ax.set_xlabel(f"predicted speedup: {name} (error {100 * mean_error(rows, key):.0f}%)")
        ax.set_title(f"measured vs {name}", fontsize=9)
    axes[0].set_ylabel("measured speedup vs best flat")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="emulated.json and cost_sweep.json files")
    parser.add_argument("--out", default="results/cpu_bound.json")
    parser.add_argument("--png", default="results/cpu_bound.png")
    args = parser.parse_args(argv)
    try:
        rows = [row for path in args.reports for run in runs_of(path) for row in rows_of(*run)]
    except (OSError, ValueError, KeyError) as err:  # ValueError: not JSON; KeyError: JSON of another kind
        print(f"cpu_bound: cannot read the reports ({type(err).__name__}: {err}); expected emulated.json files of "
              "`dmt-fx bench emulated` or a cost_sweep.json of benchmarks/cost_sweep.py", file=sys.stderr)
        return 2
    if not rows:
        print("no rows: the reports hold no flat plan to compare with", file=sys.stderr)
        return 2
    summary = {"rows": len(rows), "runs": len({r["run"] for r in rows}),
               "mean_error": {k: mean_error(rows, k) for k in ("bytes", "cpu")},
               "log_correlation": {k: log_correlation(rows, k) for k in ("bytes", "cpu")},
               "busy_median": statistics.median(r["busy"] for r in rows), "targets": targets(rows)}
    for r in rows:
        print(f"{r['run']:<60} {r['variant']:<20} measured {r['measured']:.2f}x  bytes {r['bytes']:.2f}x  "
              f"cpu {r['cpu']:.2f}x  busy {r['busy']:.2f}")
    print(f"{summary['rows']} rows, {summary['runs']} runs. Mean |error| against the measured speedup: bytes "
          f"{100 * summary['mean_error']['bytes']:.1f}%, CPU {100 * summary['mean_error']['cpu']:.1f}%; correlation "
          f"of logs: bytes {summary['log_correlation']['bytes']:.2f}, CPU {summary['log_correlation']['cpu']:.2f}; "
          f"cores busy (median) {summary['busy_median']:.2f}")
    for variant, t in summary["targets"].items():
        print(f"{variant}: met {t['target']}x in {t['met']} of {t['runs']} runs; medians measured "
              f"{t['median_measured']:.2f}x, bytes {t['median_bytes']:.2f}x, CPU {t['median_cpu']:.2f}x")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump({"summary": summary, "rows": rows}, handle, indent=1)
    plot(rows, args.png)
    print(f"-> {args.out}, {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
