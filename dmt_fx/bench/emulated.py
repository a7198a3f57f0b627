"""`dmt-fx bench emulated`: flat TorchRec plans against DMT on emulated hosts with a slow network.

Sequence: (1) set up the emulated hosts (`dmt_fx.bench.netns`: one network namespace per
host on a bridge); (2) probe, unshaped (`dmt_fx.bench.probe`): all_to_all_single among the
ranks of each host (intra-host bandwidth per rank) and among peers (cross-host); (3) shape
every host link to L x (intra-host bandwidth / ratio): one emulated NIC per rank at 1/ratio
of the intra-host bandwidth (an H100's NVLink against a 400 Gb/s NIC per GPU, roughly);
(4) probe again, shaped (intra-host traffic must not slow down, nor go through eth0;
`--no-shaped-probe` skips it, as `dmt-fx demo` does);
(5) train every variant in one torchrun launch, one agent per host under `ip netns exec`
with GLOO_SOCKET_IFNAME=eth0, rendezvous at 198.18.0.1; median and IQR of the slowest
rank's step time after warm-up (`dmt_fx.jobs.summary`); (6) JSON and PNG. The namespaces
are removed on exit, on failure and on signals.

Variants: every registered flat baseline (`dmt_fx.baselines`, family "flat": the best of
them is reported as "best flat"; by default the fp32 ones and flat-table_wise+fp16, TorchRec's
qcomms), dmt-identity and dmt-c<N> (linear towers, compression N), each also +fp16 (its peer
pooled exchanges through the same codecs, `dmt_fx.bench.variants`).
The model is `dmt_fx.models.sized:bench_model`, sized through its environment variable.
`--pipeline on|both` trains each variant (also) through a sparse-dist train pipeline (flat
plans: TorchRec's `TrainPipelineSparseDist`; DMT: `dmt_fx.runtime.pipeline`): records carry
`pipelined` and `label` (NAME or NAME+pipeline); "best flat", the speedups and the ideal are
computed within each mode.

`netem` is not available in every kernel (not on the machine this was built on): when it
is missing there is no added latency, only a rate limit, and the output says so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any, Callable, Sequence

from dmt_fx.baselines import baseline_names
from dmt_fx.baselines.registry import FLAT
from dmt_fx.bench.breakdown_plot import add_cpu_bound, add_ideal_speedups, plot_breakdown
from dmt_fx.bench.netns import SUBNET, EmulatedCluster, EmulationError, check_requirements, qdisc_inventory
from dmt_fx.bench.probe import probe
from dmt_fx.bench.variants import of_precision, with_qcomms
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.topology import Topology
from dmt_fx.jobs.launch import LaunchResult, launch
from dmt_fx.jobs.steps import pipelined_variants, split_variant
from dmt_fx.jobs.summary import slowest_step_times, summarize
from dmt_fx.models.sized import MODEL_ENV, TARGET

# the fp32 flat plans, flat table-wise with qcomms (FP16 forward, BF16 backward), DMT with and without them
DEFAULT_VARIANTS = (*of_precision(baseline_names(FLAT)), "flat-table_wise+fp16",
                    *with_qcomms(("dmt-identity", "dmt-c4")))
DEFAULT_BATCH = 256  # local batch per rank: the workload the README's figures and `dmt-fx demo` use

__all__ = ["DEFAULT_BATCH", "DEFAULT_VARIANTS", "MODEL_ENV", "TARGET", "EmulationError", "add_arguments", "parse_rate", "run"]


_RATE = re.compile(r"^\s*([0-9.]+)\s*([kmgt]?)(bit|b/s|bps|B/s|B)?\s*$", re.IGNORECASE)


def parse_rate(text: str) -> float:
    """'800mbit', '100MB/s', '1.5gbit', '50000000' (bytes/s) -> bytes per second."""
    match = _RATE.match(text)
    if not match:
        raise EmulationError(f"inter-host rate {text!r}", "a rate like 800mbit, 100MB/s or a number of bytes/s",
                             ["e.g. --inter-host-rate 800mbit"])
    value, scale, unit = float(match.group(1)), match.group(2).lower(), (match.group(3) or "B")
    value *= {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[scale]
    if unit.lower() in ("bit", "bps"):
        value /= 8
    if value <= 0:
        raise EmulationError(f"inter-host rate {text!r}", "a positive rate", ["e.g. --inter-host-rate 800mbit"])
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `dmt-fx bench emulated`."""
    parser.add_argument("--topology", default="2x2", help="HOSTSxRANKS_PER_HOST (default 2x2)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated variants (default {','.join(DEFAULT_VARIANTS)}); the fastest "
                             "flat baseline is reported as 'best flat'")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant after warm-up (>= 20 "
                        "for the report; default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps left out (default 3)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                        help=f"local batch per rank (default {DEFAULT_BATCH})")
    parser.add_argument("--tables", type=int, default=16, help="model size: embedding tables, one feature "
                        "each (default 16)")
    parser.add_argument("--embedding-dim", type=int, default=64, help="model size: embedding dim (default 64)")
    parser.add_argument("--rows", type=int, default=10_000, help="model size: rows per table (default 10000)")
    parser.add_argument("--inter-host-rate", default=None,
                        help="per-rank (per emulated NIC) inter-host rate, e.g. 800mbit or 100MB/s; "
                             "default: measured intra-host all-to-all bandwidth / --ratio")
    parser.add_argument("--ratio", type=float, default=20.0,
                        help="intra-host / inter-host bandwidth when --inter-host-rate is not given (default 20)")
    parser.add_argument("--out", default="results", help="writes OUT/emulated.json, OUT/emulated.png and "
                        "the run logs under OUT/emulated/ (default results)")
    parser.add_argument("--deadline-s", type=float, default=540, help="stop the training runs after this "
                        "long (default 540)")
    parser.add_argument("--pipeline", choices=("off", "on", "both"), default="off",
                        help="train each variant through a sparse-dist train pipeline (TorchRec's "
                             "TrainPipelineSparseDist for flat plans, dmt_fx's for DMT): off, on, or both "
                             "(each variant twice; 'best flat' is chosen within each mode; default off)")
    parser.add_argument("--shaped-probe", action=argparse.BooleanOptionalAction, default=True,
                        help="probe again after shaping, to check the shaped rates (default on; "
                             "`dmt-fx demo` turns it off to probe only once)")
    parser.add_argument("--latency-probe", action=argparse.BooleanOptionalAction, default=None,
                        help="the probe also fits per-message latency and bandwidth per tier (fixed bytes over "
                             "1..16 all-to-alls, one all-to-all of 4 KiB..1 MiB), recorded under "
                             "network.probes (default: DMT_FX_PROBE_LATENCY=1 turns it on)")


def _validated(args: argparse.Namespace) -> tuple[Topology, list[str], float | None]:
    """(topology, variants, inter-host rate override) from the options, or a clear error."""
    topology = Topology.parse(args.topology)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants:
        raise EmulationError("no variants", "at least one variant", ["e.g. --variants flat-table_wise,dmt-c4"])
    for name, value in (("--steps", args.steps), ("--batch-size", args.batch_size), ("--tables", args.tables),
                        ("--embedding-dim", args.embedding_dim), ("--rows", args.rows), ("--ratio", args.ratio)):
        if not value > 0:
            raise EmulationError(f"{name} {value}", f"{name} > 0", [f"pass a positive {name}"])
    if topology.num_hosts < 2:
        raise EmulationError(f"topology {topology}", "at least 2 hosts (the inter-host link is what is emulated)",
                             ["e.g. --topology 2x2"])
    variants = pipelined_variants(variants, getattr(args, "pipeline", "off"))
    return topology, variants, parse_rate(args.inter_host_rate) if args.inter_host_rate else None


def run(args: argparse.Namespace, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The whole benchmark; returns one record per (topology, variant); writes JSON and PNG."""
    say = progress or (lambda text: print(text, file=sys.stderr, flush=True))
    topology, variants, rate_override = _validated(args)
    check_requirements()
    started = time.monotonic()
    work = os.path.join(args.out, "emulated")
    os.makedirs(work, exist_ok=True)
    kernel_qdiscs = qdisc_inventory()
    model = {"tables": args.tables, "dim": args.embedding_dim, "rows": args.rows}
    with EmulatedCluster(topology.num_hosts) as cluster:
        say(f"emulated cluster {topology}: namespaces {', '.join(cluster.created)}")
        network = _probe_and_shape(cluster, topology, work, args, rate_override, say)
        runs = _train_all(cluster, topology, variants, args, model, work, say,
                          deadline_s=max(30.0, args.deadline_s - (time.monotonic() - started)))
        network["qdiscs"] = cluster.qdiscs()
    network["kernel_qdiscs"] = kernel_qdiscs
    network["delay_emulation"] = delay_emulation(kernel_qdiscs)
    records = _records(runs, topology, variants, network, model, args)
    breakdown_png = os.path.join(args.out, "emulated_breakdown.png")
    plot_breakdown(labelled(records), breakdown_png, f"{topology} emulated hosts: where a step goes (median of "
                                           f"{len(records[0].get('profiled_steps', []))} "
                                           "profiled steps, mean over ranks)")
    report = {"network": network, "model": model, "batch_size": args.batch_size, "steps": args.steps,
              "warmup": args.warmup, "records": records, "wall_s": time.monotonic() - started}
    with open(os.path.join(args.out, "emulated.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    plot(records, os.path.join(args.out, "emulated.png"), network)
    return records


def delay_emulation(kernel_qdiscs: dict[str, bool]) -> str:
    """What the network adds besides the rate limit, from `qdisc_inventory`. Without delay a
    message costs only its bytes (and CPU): fewer, larger messages gain nothing on the wire."""
    if kernel_qdiscs.get("netem"):
        return "netem available but not used: rate limit only"
    delaying = [q for q in ("fq", "etf") if kernel_qdiscs.get(q)]
    return ("none: the netem qdisc is not available on this kernel, so no latency is added (rate limit only; "
            + (f"{' and '.join(delaying)} present but not used)" if delaying else
               "no fq or etf either: no qdisc here can delay a packet)"))


def _probe_and_shape(cluster: EmulatedCluster, topology: Topology, work: str, args: argparse.Namespace,
                     rate_override: float | None, say: Callable[[str], None]) -> dict[str, Any]:
    """Probe, shape every host link, probe again; the network part of the report."""
    latency = getattr(args, "latency_probe", None)
    unshaped = probe(cluster, topology, os.path.join(work, "probe-unshaped"), latency=latency)
    intra = unshaped.get("intra", {}).get("bandwidth_bytes_per_s")
    cross_unshaped = unshaped["cross"]["bandwidth_bytes_per_s"]
    reference = intra if intra else cross_unshaped  # Hx1: no intra-host group, use the unshaped link
    per_rank_rate = rate_override or reference / args.ratio
    link_rate = per_rank_rate * topology.local_world_size  # one NIC per rank, all of a host's share its link
    say(f"intra-host all-to-all: {_fmt(intra)} per rank; inter-host rate {_fmt(per_rank_rate)} per rank "
        f"({_fmt(link_rate)} per host link, tbf)")
    cluster.shape(link_rate)
    shaped = (probe(cluster, topology, os.path.join(work, "probe-shaped"), latency=latency)
              if getattr(args, "shaped_probe", True) else {})
    shaped_intra = shaped.get("intra", {})
    if shaped:
        say(f"shaped: intra-host {_fmt(shaped_intra.get('bandwidth_bytes_per_s'))}, "
            f"cross-host {_fmt(shaped['cross']['bandwidth_bytes_per_s'])} per rank")
    return {
        "topology": str(topology), "namespaces": "removed", "subnet": f"{SUBNET}.0/24 (198.18.0.0/15)",
        "intra_host_bandwidth_bytes_per_s": intra, "cross_host_unshaped_bandwidth_bytes_per_s": cross_unshaped,
        "intra_host_bandwidth_shaped_run_bytes_per_s": shaped_intra.get("bandwidth_bytes_per_s"),
        "cross_host_shaped_bandwidth_bytes_per_s": shaped.get("cross", {}).get("bandwidth_bytes_per_s"),
        "intra_phase_eth0_tx_bytes_per_iter": shaped_intra.get("eth0_tx_bytes_all_hosts"),  # None: not probed
        "intra_phase_payload_bytes_per_iter": shaped_intra.get("bytes_sent_per_rank", 0) * topology.world_size,
        "inter_host_rate_bytes_per_s_per_rank": per_rank_rate, "inter_host_link_rate_bytes_per_s": link_rate,
        "rate_source": "--inter-host-rate" if rate_override else f"intra-host bandwidth / {args.ratio:g}",
        "ratio": args.ratio, "shaping": "tc tbf on both directions of every host link",
        "probes": {"unshaped": unshaped, "shaped": shaped},
    }


def _train_all(cluster: EmulatedCluster, topology: Topology, variants: list[str], args: argparse.Namespace,
               model: dict[str, int], work: str, say: Callable[[str], None], *,
               deadline_s: float) -> dict[str, dict[str, Any]]:
    """Train every variant in one launch; per variant: its rank results and the bytes eth0 sent."""
    model_env = ",".join(f"{k}={v}" for k, v in model.items())
    out = os.path.join(work, "train")
    _clear(out, variants)
    marks = {"_start": cluster.tx_bytes()}
    start = time.monotonic()

    def poll() -> None:  # eth0 counters when a variant's result files appear
        for v in variants:
            if v not in marks and len(_rank_files(os.path.join(out, v))) == topology.world_size:
                marks[v] = cluster.tx_bytes()
                say(f"  {v} done ({time.monotonic() - start:.0f} s)")

    say(f"training {', '.join(variants)} in one launch ({args.warmup} + {args.steps} steps each)")
    worker_args = ["--target", getattr(args, "target", None) or TARGET, "--topology", str(topology), "--steps", str(args.steps + args.warmup),
                   "--batch-size", str(args.batch_size), "--lr", "0.05", "--optimizer", "adagrad",
                   "--warmup", str(args.warmup), "--timeout-s", "120", "--variants", ",".join(variants), "--out", out]
    result = launch(topology, worker_args, out, deadline_s=deadline_s, on_poll=poll, prefix=cluster.prefix,
                    master_addr=cluster.address(0), grace_s=30,
                    host_env=lambda host: {**cluster.host_env(host), MODEL_ENV: model_env})
    poll()
    _check(result, "the training launch")
    runs, previous = {}, marks["_start"]
    for v in variants:
        after = marks.get(v, cluster.tx_bytes())
        ranks = LaunchResult(result.returncodes, result.seconds, os.path.join(out, v), False).ranks()
        runs[v] = {"ranks": ranks, "eth0_tx_bytes": sum(after) - sum(previous)}
        previous = after
    return runs


def _rank_files(folder: str) -> list[str]:
    return [n for n in os.listdir(folder) if re.fullmatch(r"rank\d+\.json", n)] if os.path.isdir(folder) else []


def _clear(out: str, variants: Sequence[str]) -> None:
    for folder in [out, *(os.path.join(out, v) for v in variants)]:
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            if name.startswith(("rank", "progress", "outputs_rank")):
                os.remove(os.path.join(folder, name))


def _check(result: Any, what: str) -> None:
    if not result.ok:
        reason = "timed out" if result.timed_out else f"exit codes {result.returncodes}"
        raise EmulationError(f"{what} failed ({reason}); logs in {result.out_dir}/agent*.log:\n"
                             f"{result.log_tail(12)}", "every rank to finish its steps",
                             ["read the agent logs", "try fewer --steps, a smaller --batch-size or model"])


def _records(runs: dict[str, dict[str, Any]], topology: Topology, variants: list[str], network: dict,
             model: dict, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for v in variants:
        ranks = runs[v]["ranks"]
        name, pipelined = split_variant(v)
        row = summarize(name, ranks, warmup=args.warmup)
        row.update({
            "pipelined": pipelined, "label": v,
            "intra_host_bandwidth_bytes_per_s": network["intra_host_bandwidth_bytes_per_s"],
            "inter_host_rate_bytes_per_s": network["inter_host_rate_bytes_per_s_per_rank"],
            "inter_host_link_rate_bytes_per_s": network["inter_host_link_rate_bytes_per_s"],
            # all bytes the hosts' eth0 sent during the variant (setup included: rank 0's weight
            # broadcast, DDP, rendezvous), per step: an upper bound check on the metered bytes
            "eth0_tx_bytes_per_step_incl_setup": runs[v]["eth0_tx_bytes"] / max(len(slowest_step_times(ranks)), 1),
            "metered_cross_host_bytes_per_step": row["cross_host_bytes"] * topology.world_size,
            "model": model, "batch_size": args.batch_size, "delay_emulation": network["delay_emulation"],
        })
        rows.append(row)
    return best_flat_per_mode(rows, network["inter_host_rate_bytes_per_s_per_rank"])


def best_flat_per_mode(rows: list[dict[str, Any]], rate_bytes_per_s: float) -> list[dict[str, Any]]:
    """`best_flat` and the ideal speedups within each pipelining mode: a pipelined DMT row is
    compared with the fastest pipelined flat plan, an unpipelined one with the unpipelined."""
    for mode in (False, True):
        marked = best_flat([r for r in rows if r.get("pipelined", False) == mode])
        add_cpu_bound(add_ideal_speedups(marked, rate_bytes_per_s), machine_cores())
    return rows


def machine_cores() -> int:
    """The cores this process (and the ranks it launches, which inherit its affinity) may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def labelled(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies whose `variant` names the pipelining mode too (NAME+pipeline), for tables and plots."""
    return [{**r, "variant": r.get("label", r["variant"])} for r in records]


def best_flat(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark the fastest flat baseline and every row's speed-up against it."""
    flats = [r for r in rows if r["variant"] in baseline_names(FLAT)]
    best = min(flats, key=lambda r: r["step_time_median_s"]) if flats else None
    for r in rows:
        r["best_flat"] = best["variant"] if best else None
        r["is_best_flat"] = r is best
        r["speedup_vs_best_flat"] = (best["step_time_median_s"] / r["step_time_median_s"]
                                     if best and r["step_time_median_s"] > 0 else None)
    return rows


def _fmt(bytes_per_s: float | None) -> str:
    if not bytes_per_s:
        return "n/a"
    return f"{bytes_per_s / 1e6:.1f} MB/s ({bytes_per_s * 8 / 1e9:.2f} Gbit/s)"


def plot(records: list[dict[str, Any]], path: str, network: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.get("label", r["variant"]) + (" (best flat)" if r["is_best_flat"] else "") for r in records]
    medians = [r["step_time_median_s"] * 1e3 for r in records]
    low = [max(0.0, (r["step_time_median_s"] - r["step_time_q1_s"]) * 1e3) for r in records]
    high = [max(0.0, (r["step_time_q3_s"] - r["step_time_median_s"]) * 1e3) for r in records]
    flat = baseline_names(FLAT)
    colors = ["tab:blue" if r["variant"] in flat else "tab:orange" for r in records]
    fig, ax = plt.subplots(figsize=(1.6 * len(records) + 3, 4.5))
    ax.bar(range(len(records)), medians, yerr=[low, high], capsize=5, color=colors)
    for i, r in enumerate(records):
        if r["speedup_vs_best_flat"] and r["variant"] not in flat:
            ax.annotate(f"{r['speedup_vs_best_flat']:.2f}x", (i, medians[i] + high[i]), ha="center",
                        va="bottom")
    ax.set_xticks(range(len(records)), names, rotation=20, ha="right")
    ax.set_ylabel("median step time, slowest rank (ms); bars: IQR")
    ax.set_title(f"{network['topology']} emulated hosts; inter-host {_fmt(network['inter_host_rate_bytes_per_s_per_rank'])}"
                 f" per rank, intra {_fmt(network['intra_host_bandwidth_bytes_per_s'])}\n"
                 f"delay emulation: {'none (no netem)' if 'none' in network['delay_emulation'] else 'no'}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dmt_fx.bench.emulated [options]`: the benchmark, JSON records on stdout."""
    parser = argparse.ArgumentParser(prog="python -m dmt_fx.bench.emulated")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        records = run(args)
    except DMTError as err:
        print(f"dmt-fx: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
