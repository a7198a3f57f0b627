"""The step breakdown in the reports: the ideal speedups of `bench emulated` and a stacked-bar PNG.

Ideal: a variant's cross-host bytes need `bytes / rate` seconds on the
shaped inter-host link (per rank, per step). Replacing the best flat plan's wire time by a
DMT variant's, all else equal, gives the speedup its bytes allow:

    ideal = T_flat / (T_flat - wire_flat + wire_variant)

next to the measured `speedup_vs_best_flat`. The best flat row also gets the measured
share of its profiled step its training thread spent in exchanges (`exposed_comm_s`: its
all-to-alls, which mix both tiers; the all-reduces are left out) and the share its
cross-host wire time would be of its step.

CPU-bound (`add_cpu_bound`): when every rank of the job runs on one machine, the ranks'
CPU time per step divided by cores x step time (`cpu_busy_share`) tells how much of the
step the machine's cores were busy with the job. Near 1, the step is the CPU's, not the
network's, and a variant's speedup follows its CPU per step:

    cpu_speedup = CPU_flat / CPU_variant      (process CPU of the slowest rank, medians)

next to the ideal from bytes, so a reader sees which of the two a measured speedup tracks.
"""

from __future__ import annotations

from typing import Any, Sequence

EXCHANGE_TIERS = ("cross_host", "intra_host")
FLAT_EXCHANGES = ("input_dist", "output_dist", "all_to_all_backward")

__all__ = ["add_cpu_bound", "add_ideal_speedups", "plot_breakdown", "wire_seconds"]


def wire_seconds(record: dict[str, Any], rate_bytes_per_s: float) -> float:
    """Seconds per step this rank's cross-host bytes take at the per-rank inter-host rate."""
    return record.get("cross_host_bytes", 0.0) / rate_bytes_per_s if rate_bytes_per_s else 0.0


def exposed_exchange_seconds(record: dict[str, Any]) -> float:
    """Profiled exchange time of the training thread: DMT's tiers, flat's world all-to-alls."""
    stages = record.get("breakdown_s", {})
    tiers = record.get("exposed_comm_s", {})
    return sum(tiers.get(t, 0.0) for t in EXCHANGE_TIERS) + sum(stages.get(k, 0.0) for k in FLAT_EXCHANGES)


def add_ideal_speedups(rows: list[dict[str, Any]], rate_bytes_per_s: float) -> list[dict[str, Any]]:
    """Fields of the ideal comparison on every row (after `best_flat` marked the best)."""
    best = next((r for r in rows if r.get("is_best_flat")), None)
    if best is None:
        return rows
    step, flat_wire = best["step_time_median_s"], wire_seconds(best, rate_bytes_per_s)
    profiled = sum(best.get("breakdown_s", {}).values())
    best["exposed_exchange_share"] = exposed_exchange_seconds(best) / profiled if profiled else None
    best["cross_host_wire_share"] = flat_wire / step if step else None
    for r in rows:
        r["cross_host_wire_s"] = wire_seconds(r, rate_bytes_per_s)
        rest = step - flat_wire + r["cross_host_wire_s"]
        r["ideal_speedup_vs_best_flat"] = step / rest if rest > 0 else None
    return rows


def add_cpu_bound(rows: list[dict[str, Any]], cores: int) -> list[dict[str, Any]]:
    """`cpu_busy_share` and `cpu_speedup_vs_best_flat` on every row (after `best_flat`);
    `cores`: the cores of the one machine all ranks ran on."""
    best = next((r for r in rows if r.get("is_best_flat")), None)
    for r in rows:
        step, total = r.get("step_time_median_s"), r.get("step_cpu_all_ranks_median_s")
        r["machine_cores"] = cores
        r["cpu_busy_share"] = total / (cores * step) if total and step and cores else None
        cpu, flat_cpu = r.get("step_cpu_median_s"), best and best.get("step_cpu_median_s")
        r["cpu_speedup_vs_best_flat"] = flat_cpu / cpu if cpu and flat_cpu else None
    return rows


def plot_breakdown(records: Sequence[dict[str, Any]], path: str, title: str) -> bool:
    """One stacked bar per variant (median seconds per key of `breakdown_s`); False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in records for k in r.get("breakdown_s", {})})
    fig, ax = plt.subplots(figsize=(1.5 * len(records) + 4, 4.8))
    bottoms = [0.0] * len(records)
    cmap = plt.get_cmap("tab20")
    for i, key in enumerate(keys):
        heights = [r.get("breakdown_s", {}).get(key, 0.0) * 1e3 for r in records]
        ax.bar(range(len(records)), heights, bottom=bottoms, label=key, color=cmap(i % 20))
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    ax.set_xticks(range(len(records)), [r["variant"] for r in records], rotation=20, ha="right")
    ax.set_ylabel("median ms per step, training thread (profiled steps)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
