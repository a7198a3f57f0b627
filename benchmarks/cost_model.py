"""The alpha-beta cost model (dmt_fx/cost/) against measurements, and extrapolated.

    python benchmarks/cost_model.py [--emulated results/emulated.json] [--t-compute-ms 2.0]

(a) When results/emulated.json exists (records of emulated-network runs: topology,
    variant, step_time_median_s, the traffic fields of `dmt-fx bench traffic`, and the
    measured intra/inter rates, per record or at the top level; see
    `dmt_fx.cost.tiers_from` for the accepted keys), predict every record's step
    time, t_compute measured here as a single-process step of the same model and variant at
    the same local batch (times ranks / cores when the emulated ranks share this CPU;
    --no-cpu-share to turn off), and report the prediction error.
(b) Extrapolate to data-center shapes: L = 8 ranks per host, H = 8 .. 64 hosts,
    NVLink-class intra-host (450 GB/s, alpha 5 us) and NIC-class inter-host (50 GB/s per
    GPU, alpha 20 us: the link fields of the `Topology` predicted for), traffic per rank per
    step from the ANALYTIC formulas of DMT.md and the byte model of `dmt_fx.cost.wire`
    (`dmt_fx.cost.traffic.analytic_traffic`) for a stated model size, for flat table-wise,
    DMT identity and DMT c = 4; predicted DMT speedup vs hosts. THIS IS A MODEL: no
    overlap, a serial alpha per message, t_compute assumed (not measured on such a GPU),
    dense all-reduce left out (the same for every variant, it would dilute the speedups).
Writes results/cost_model.json and results/cost_model_extrapolation.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dmt_fx.bench.cost_model import analytic_traffic  # noqa: E402  (by variant name)
from dmt_fx.bench.variants import DMT, parse  # noqa: E402
from dmt_fx.cost import traffic, wire  # noqa: E402
from dmt_fx.cost.fit import latency_model  # noqa: E402
from dmt_fx.cost.links import Tier, Tiers, tiers_from, tiers_of  # noqa: E402
from dmt_fx.cost.measure import measure_compute  # noqa: E402
from dmt_fx.cost.steptime import breakdown, step_terms  # noqa: E402
from dmt_fx.ir.topology import Topology  # noqa: E402

VARIANTS = ("flat-table_wise", "dmt-identity", "dmt-c4")


# ---------------------------------------------------------------- (a) emulated runs


def _records(payload) -> list[dict]:
    if isinstance(payload, list):
        return payload
    for key in ("records", "runs", "results"):
        if isinstance(payload.get(key), list):
            return payload[key]
    return []


_compute_cache: dict[tuple, float] = {}


def single_process_compute(target: str, variant: str, topology: str, batch: int, steps: int = 20,
                           env: dict[str, str] | None = None) -> float:
    """Median single-process step time of `variant`'s model (flat: the original; dmt-*: its
    transform on `topology`, with the variant's tower modules) at local batch `batch`;
    `env`: environment the target's factory reads (dmt_fx.bench.emulated's model size)."""
    typed = parse(variant)
    key = (target, typed.base if typed.family == DMT else "flat", topology, batch, tuple(sorted((env or {}).items())))
    if key in _compute_cache:
        return _compute_cache[key]
    import torch

    import dmt_fx
    from dmt_fx.ir.topology import Topology
    from dmt_fx.jobs.data import clicks
    from dmt_fx.jobs.target import load_target
    from dmt_fx.jobs.worker import batch_maker

    os.environ.update(env or {})
    torch.set_num_threads(1)
    model, example = load_target(target)
    reference = dmt_fx.transform(copy.deepcopy(model), Topology.parse(topology), example_inputs=example)
    make = batch_maker(target, example, reference)
    if typed.family == DMT:
        kw = {"tower_module": "linear", "compression": typed.compression} if typed.kind == "linear" else {}
        model = dmt_fx.transform(copy.deepcopy(model), Topology.parse(topology), example_inputs=example, **kw)
    inputs = make(batch, 7)
    _compute_cache[key] = measure_compute(model, inputs, clicks(inputs, 7), steps=steps)
    return _compute_cache[key]


def _world(record: dict) -> int:
    if "ranks" in record:
        return int(record["ranks"])
    h, l = (int(x) for x in str(record["topology"]).lower().split("x"))
    return h * l


def _target_of(record: dict) -> tuple[str, dict[str, str]]:
    """The model an emulated record trained: its "target", or dmt_fx.bench.emulated's bench model
    sized by record["model"] (through that module's environment variable)."""
    if record.get("target"):
        return record["target"], {}
    if isinstance(record.get("model"), dict):
        from dmt_fx.bench import emulated

        return emulated.TARGET, {emulated.MODEL_ENV: ",".join(f"{k}={v}" for k, v in record["model"].items())}
    return "dmt_fx.models.wide:wide_model", {}


def emulated_errors(path: str, cpu_share: bool = True, inter_alpha_s: float | None = None,
                    intra_alpha_s: float | None = None) -> dict:
    with open(path) as handle:
        payload = json.load(handle)
    rows = []
    for record in _records(payload):
        tiers = tiers_from(record, payload if isinstance(payload, dict) else {})
        if tiers is not None and (inter_alpha_s is not None or intra_alpha_s is not None):
            tiers = Tiers(Tier(tiers.intra.alpha_s if intra_alpha_s is None else intra_alpha_s, tiers.intra.beta_Bps),
                          Tier(tiers.inter.alpha_s if inter_alpha_s is None else inter_alpha_s, tiers.inter.beta_Bps))
        measured = record.get("step_time_median_s")
        if tiers is None or not measured:
            rows.append({"topology": record.get("topology"), "variant": record.get("variant"),
                         "skipped": "no measured intra/inter rates or no step_time_median_s"})
            continue
        target, env = _target_of(record)
        batch = int(record.get("batch_size", payload.get("batch_size", 32) if isinstance(payload, dict) else 32))
        t_single = record.get("t_compute_s") or single_process_compute(target, record["variant"],
                                                                       record["topology"], batch, env=env)
        # all emulated ranks share this machine's cores: each gets cores / N of the CPU
        share = max(1.0, _world(record) / (os.cpu_count() or 1)) if cpu_share else 1.0
        t_compute = t_single * share
        parts = breakdown(record, tiers, t_compute)
        rows.append({"topology": record["topology"], "variant": record["variant"],
                     "measured_s": measured, "predicted_s": parts["total"], "breakdown_s": parts,
                     "t_compute_single_process_s": t_single, "cpu_share_factor": share,
                     "tiers": tiers.to_dict(), "error_pct": (parts["total"] / measured - 1) * 100})
    errors = [abs(r["error_pct"]) for r in rows if "error_pct" in r]
    return {"source": path, "records": rows,
            "mean_abs_error_pct": statistics.fmean(errors) if errors else None,
            "median_abs_error_pct": statistics.median(errors) if errors else None}


# ---------------------------------------------------------------- (b) extrapolation


def cluster(args, hosts: int) -> Topology:
    """The data-center shape predicted for: its link fields are what the cost model reads."""
    return Topology(hosts, args.ranks_per_host, intra_host_bandwidth_gbps=args.intra_GBps,
                    inter_host_bandwidth_gbps=args.inter_GBps, intra_host_latency_us=args.intra_alpha_us,
                    inter_host_latency_us=args.inter_alpha_us)


def extrapolate(args) -> dict:
    tiers = tiers_of(cluster(args, 1))  # the same links for every host count (reported once)
    model = {"local_batch": args.batch, "features": args.features, "pooled_width": args.features * args.dim,
             "dim": args.dim, "ids_per_feature": args.ids_per_feature, "elem_bytes": wire.EMBEDDING_BYTES,
             "id_bytes": wire.ID_BYTES, "length_bytes": wire.LENGTH_BYTES, "id_collectives": wire.ID_COLLECTIVES}
    t_compute = args.t_compute_ms * 1e-3
    rows = []
    for hosts in args.hosts:
        topology = cluster(args, hosts)
        row = {"hosts": hosts, "ranks_per_host": args.ranks_per_host, "gpus": topology.world_size}
        for variant in VARIANTS:
            traffic = analytic_traffic(variant, hosts, args.ranks_per_host, batch=args.batch,
                                       width=model["pooled_width"], features=args.features,
                                       ids_per_feature=args.ids_per_feature)
            parts = breakdown(traffic, topology, t_compute)
            bound = breakdown(traffic, topology, t_compute, alpha_per="collective")
            row[variant] = {"traffic": traffic, "predicted_s": parts, "predicted_alpha_per_collective_s": bound}
        flat = row["flat-table_wise"]["predicted_s"]
        for variant in VARIANTS[1:]:
            dmt = row[variant]["predicted_s"]
            row[f"speedup_{variant}"] = flat["total"] / dmt["total"]
            row[f"comm_speedup_{variant}"] = (flat["total"] - t_compute) / (dmt["total"] - t_compute)
            row[f"speedup_alpha_per_collective_{variant}"] = (row["flat-table_wise"]["predicted_alpha_per_collective_s"]
                                                             ["total"] /
                                                             row[variant]["predicted_alpha_per_collective_s"]["total"])
        rows.append(row)
    return {"what": "MODEL, not a measurement: alpha-beta per link tier, no overlap of collectives or compute, "
                    "a serial alpha per message (speedup_*; speedup_alpha_per_collective_* is the optimistic "
                    "bound with one alpha per collective per tier), analytic traffic (DMT.md formulas), "
                    "t_compute assumed, dense all-reduce and tower-module compute left out",
            "tiers": tiers.to_dict(), "t_compute_s": t_compute, "model": model, "rows": rows}


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    hosts = [r["hosts"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, color in (("dmt-identity", "tab:blue"), ("dmt-c4", "tab:orange")):
        ax.plot(hosts, [r[f"speedup_{variant}"] for r in rows], "o-", color=color,
                label=f"{variant}: one alpha per message (t_compute {result['t_compute_s'] * 1e3:.1f} ms)")
        ax.plot(hosts, [r[f"speedup_alpha_per_collective_{variant}"] for r in rows], "s--", color=color,
                alpha=0.7, label=f"{variant}: one alpha per collective (optimistic for flat)")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(hosts, [f"{h}\n({h * rows[0]['ranks_per_host']} GPUs)" for h in hosts])
    ax.set_xlabel("hosts (8 GPUs each)")
    ax.set_ylabel("predicted step-time speedup over flat table-wise")
    m, t = result["model"], result["tiers"]
    ax.set_title("MODEL (alpha-beta, no overlap), not measured: predicted DMT speedup\n"
                 f"B={m['local_batch']}, D={m['features']}x{m['dim']}, intra {t['intra']['beta_Bps'] / 1e9:.0f} GB/s "
                 f"{t['intra']['alpha_s'] * 1e6:.0f} us, inter {t['inter']['beta_Bps'] / 1e9:.0f} GB/s "
                 f"{t['inter']['alpha_s'] * 1e6:.0f} us", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------- (c) extrapolation on a MEASURED latency model
#
# Per tier, one collective over n ranks costs a_collective + a_message x (n - 1) + bytes / beta:
# a_message from the cross-host probes of two group sizes (2x2: n = 2, 4x2: n = 4; the slope),
# a_collective per tier from its probe at n = 2 (the intercept). Traffic per rank per step from
# the byte model (DMT.md): flat table-wise (every all-to-all over N = H L ranks), grid (TorchRec's
# grid sharding, table-row-wise per column shard: ids over N, pooled outputs reduce-scattered
# inside the host then all-to-all over the H peers), 2D (DMPCollection: table-wise over a
# sharding group of H peers, one per host; the weight sync an all-reduce over the L ranks of a
# host every `sync_every` steps, weights + row-wise Adagrad state), DMT identity and c = 4.
# Left out (equal for all, or not modelled): dense all-reduce, tower-module compute, overlap.


def scale_traffic(variant: str, H: int, L: int, m: dict, sync_every: int = 1) -> list[tuple[str, int, float, float]]:
    """(tier, group size, collectives, bytes) per rank per step for one variant at H x L
    (`dmt_fx.cost.traffic.scale_traffic` of the variant's layout)."""
    if variant.startswith("torchrec-2d"):
        return traffic.scale_traffic("torchrec-2d", H, L, m, sync_every)
    if variant.startswith("flat-"):
        return traffic.scale_traffic(variant, H, L, m, sync_every)
    return traffic.scale_traffic(traffic.DMT, H, L, m, compression=parse(variant).compression)


def scale_time(parts: list, lat: dict, beta_intra: float, beta_inter: float, t_compute: float) -> float:
    """The one step model on the measured latency form: a_collective per call, a_message per peer."""
    tiers = Tiers(Tier(lat["a_message_s"], beta_intra, lat["a_collective_intra_s"]),
                  Tier(lat["a_message_s"], beta_inter, lat["a_collective_inter_s"]))
    return step_terms(traffic.scale_load(parts, t_compute), tiers)["total"]


SCALE_VARIANTS = ("flat-table_wise", "flat-grid_shard", "torchrec-2d", "torchrec-2d-sync100", "dmt-identity", "dmt-c4")


def extrapolate_measured(sweep: dict, fit: dict, scenarios: dict, model: dict, hosts=(8, 16, 32, 64), L: int = 8,
                         alpha_scale: float = 1.0) -> dict:
    lat = latency_model(sweep)
    lat = {**lat, **{k: lat[k] * alpha_scale for k in ("a_message_s", "a_collective_inter_s", "a_collective_intra_s")},
           "alpha_scale": alpha_scale}
    out = {"what": "MODEL on a MEASURED latency model (probe: a_collective + a_message x (n - 1) per collective, "
                   "relative least squares); traffic from the byte model; no overlap; dense all-reduce, tower-module "
                   "compute left out; 2D's weight sync every step (as run here) and every 100 steps",
           "latency_model": lat, "model": model, "ranks_per_host": L, "scenarios": {}}
    for name, sc in scenarios.items():
        rows = []
        # the bound: every collective costs its n = 2 alpha, whatever its group (no per-message growth)
        flat_lat = {**lat, "a_message_s": 0.0, "a_collective_inter_s": lat["a_collective_inter_s"] + lat["a_message_s"],
                    "a_collective_intra_s": lat["a_collective_intra_s"] + lat["a_message_s"]}
        for H in hosts:
            row = {"hosts": H, "gpus": H * L}
            for key, latency in (("", lat), ("_alpha_per_collective", flat_lat)):
                times = {v: scale_time(scale_traffic(v.replace("-sync100", ""), H, L, model,
                                                     100 if v.endswith("sync100") else 1),
                                       latency, sc["beta_intra_Bps"], sc["beta_inter_Bps"], sc["t_compute_s"])
                         for v in SCALE_VARIANTS}
                row[f"step_s{key}"] = times
                row[f"speedup{key}"] = {f"{d} vs {f}": times[f] / times[d] for d in ("dmt-identity", "dmt-c4")
                                        for f in SCALE_VARIANTS[:4]}
            rows.append(row)
        out["scenarios"][name] = {**sc, "rows": rows}
    return out


def plot_measured(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["scenarios"])
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4.8), squeeze=False)
    styles = {"flat-table_wise": "o-", "flat-grid_shard": "s--", "torchrec-2d": "^:", "torchrec-2d-sync100": "v-."}
    for ax, name in zip(axes[0], names):
        sc = result["scenarios"][name]
        hosts = [r["hosts"] for r in sc["rows"]]
        for dmt, color in (("dmt-identity", "tab:blue"), ("dmt-c4", "tab:orange")):
            for flat, style in styles.items():
                ax.plot(hosts, [r["speedup"][f"{dmt} vs {flat}"] for r in sc["rows"]], style, color=color,
                        label=f"{dmt} vs {flat}", alpha=0.9 if flat == "flat-table_wise" else 0.6)
        ax.plot(hosts, [r["speedup_alpha_per_collective"]["dmt-c4 vs flat-table_wise"] for r in sc["rows"]], "x:",
                color="black", label="dmt-c4 vs flat-table_wise, no per-message growth (bound)")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(hosts, [f"{h}\n({h * result['ranks_per_host']})" for h in hosts])
        ax.set_xlabel("hosts (GPUs), 8 ranks per host")
        ax.set_ylabel("predicted speedup (flat / DMT step time)")
        ax.set_title(f"{name}: intra {sc['beta_intra_Bps'] / 1e9:.3g} GB/s, inter {sc['beta_inter_Bps'] / 1e9:.3g} "
                     f"GB/s per rank,\ncompute {sc['t_compute_s'] * 1e3:.3g} ms; {sc['alpha_note']}", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6.5)
    fig.suptitle("MODEL, not a measurement: DMT speedup vs scale on a measured latency model", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--emulated", default="results/emulated.json")
    p.add_argument("--out", default="results/cost_model.json")
    p.add_argument("--inter-alpha-us-emulated", type=float, default=None,
                   help="(a): inter-host alpha when emulated.json has none (no netem: latency not emulated)")
    p.add_argument("--intra-alpha-us-emulated", type=float, default=None, help="(a): same, intra-host")
    p.add_argument("--no-cpu-share", action="store_true",
                   help="(a): do not scale t_compute by ranks / cores (the emulated ranks share this CPU)")
    p.add_argument("--png", default="results/cost_model_extrapolation.png")
    p.add_argument("--hosts", type=lambda s: [int(x) for x in s.split(",")], default=[8, 16, 32, 64])
    p.add_argument("--ranks-per-host", type=int, default=8)
    p.add_argument("--batch", type=int, default=2048, help="local batch per GPU")
    p.add_argument("--features", type=int, default=26)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--ids-per-feature", type=float, default=1.0)
    p.add_argument("--t-compute-ms", type=float, default=2.0, help="ASSUMED per-step compute on the GPU")
    p.add_argument("--intra-GBps", type=float, default=450.0)
    p.add_argument("--intra-alpha-us", type=float, default=5.0)
    p.add_argument("--inter-GBps", type=float, default=50.0)
    p.add_argument("--inter-alpha-us", type=float, default=20.0)
    args = p.parse_args(argv)

    result: dict = {}
    if os.path.exists(args.emulated):
        us = (lambda v: None if v is None else v * 1e-6)
        result["emulated"] = emulated_errors(args.emulated, cpu_share=not args.no_cpu_share,
                                             inter_alpha_s=us(args.inter_alpha_us_emulated),
                                             intra_alpha_s=us(args.intra_alpha_us_emulated))
        print(f"(a) prediction vs {args.emulated}:")
        for r in result["emulated"]["records"]:
            if "error_pct" in r:
                print(f"  {r['topology']:>4} {r['variant']:<20} measured {r['measured_s'] * 1e3:8.2f} ms  "
                      f"predicted {r['predicted_s'] * 1e3:8.2f} ms  error {r['error_pct']:+6.1f} %")
            else:
                print(f"  {r['topology']} {r['variant']}: skipped ({r['skipped']})")
        print(f"  mean |error| {result['emulated']['mean_abs_error_pct']}")
    else:
        result["emulated"] = {"source": args.emulated, "skipped": "file not found"}
        print(f"(a) {args.emulated} not found: no prediction error to report")
    result["extrapolation"] = extrapolate(args)
    print("(b) extrapolation (MODEL): predicted step time and speedup over flat table-wise")
    for row in result["extrapolation"]["rows"]:
        times = "  ".join(f"{v} {row[v]['predicted_s']['total'] * 1e3:7.2f} ms" for v in VARIANTS)
        print(f"  {row['hosts']:>3} hosts ({row['gpus']:>3} GPUs): {times}  speedup identity "
              f"{row['speedup_dmt-identity']:.2f}x, c4 {row['speedup_dmt-c4']:.2f}x "
              f"(alpha per collective: {row['speedup_alpha_per_collective_dmt-identity']:.2f}x, "
              f"{row['speedup_alpha_per_collective_dmt-c4']:.2f}x)")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    plot(result["extrapolation"], args.png)
    print(f"-> {args.out}, {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
