"""The cost model's sweep: measure, fit on part, predict the rest.

    python benchmarks/cost_sweep.py                      # run the sweep, then fit and predict
    python benchmarks/cost_sweep.py --from-json benchmarks/recorded/cost_sweep.json   # refit offline

Run: for each topology (2x2, 4x2) x inter-host rate (3) x local batch (2), ONE launch of
`dmt-fx bench emulated --format json --out ...` (a subprocess under
`flock /tmp/dmtfx_netns.lock`: the emulated network is shared) trains every variant
(flat-table_wise, flat-grid_shard, torchrec-2d, dmt-identity, dmt-c2, dmt-c4) side by side.
The first launch of each (topology, rate) runs the probe's latency mode
(DMT_FX_PROBE_LATENCY=1) on the shaped network: alpha and beta per tier, measured.
`uptime` is recorded before and after each launch. The results JSON is rewritten after every
launch, so a cut-off sweep keeps what it measured.

Fit and predict: `dmt_fx.cost.sweep.fit_step_model` on the training part of the sweep
(--train: one batch, one rate or one topology), `predict_step` on every point; the error on
the points NOT used for fitting is the headline (`held_out`), the in-sample error next to it.

Save: `--save-params PATH` writes the fitted parameters of one split (--params-split, default
the headline) as the JSON of `dmt_fx.cost.params` (schema "dmt_fx.cost_params/1"), which
`AutoOptions(cost_params=PATH)` loads so plan="auto" ranks its candidates with the fitted
model; `--params-network "2x2 200mbit"` adds that point's measured links ("tiers").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.cost_model import extrapolate_measured, plot_measured  # noqa: E402
from dmt_fx.cost.sweep import cost_params, evaluate_sweep, sweep_tiers  # noqa: E402

VARIANTS = "flat-table_wise,flat-grid_shard,torchrec-2d,dmt-identity,dmt-c2,dmt-c4"
LOCK = "/tmp/dmtfx_netns.lock"
KEEP = ("variant", "topology", "ranks", "steps", "warmup_steps", "timed_steps", "step_time_median_s",
        "step_time_q1_s", "step_time_q3_s", "step_times_s", "step_cpu_median_s", "step_runqueue_wait_median_s",
        "breakdown_s", "exposed_comm_s", "comm_thread_s", "cross_host_id_bytes", "cross_host_embedding_bytes",
        "cross_host_bytes", "cross_host_messages", "cross_host_collectives", "intra_host_bytes",
        "intra_host_messages", "intra_host_collectives", "dense_allreduce_bytes", "dense_allreduce_messages",
        "dense_allreduce_collectives", "collectives", "label", "pipelined",
        "dense_allreduce_bytes_estimate", "inter_host_rate_bytes_per_s", "intra_host_bandwidth_bytes_per_s",
        "best_flat", "speedup_vs_best_flat", "final_loss", "batch_size", "model")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def load_average() -> float:
    return os.getloadavg()[0]


def run_point(args: argparse.Namespace, topology: str, rate: str, batch: int, latency: bool) -> dict:
    """One `bench emulated` launch: every variant at one (topology, rate, batch)."""
    out = os.path.join(args.work, f"{topology}-{rate}-b{batch}")
    steps, warmup = (args.steps_4x2, args.warmup_4x2) if topology.startswith("4") else (args.steps, args.warmup)
    cmd = ["flock", LOCK, os.path.join(os.path.dirname(sys.executable), "dmt-fx"), "bench", "emulated",
           "--topology", topology, "--variants", args.variants, "--steps", str(steps), "--warmup", str(warmup),
           "--batch-size", str(batch), "--inter-host-rate", rate, "--format", "json", "--out", out,
           "--deadline-s", str(args.deadline_s)]
    if not latency:
        cmd.append("--no-shaped-probe")
    env = {**os.environ, "DMT_FX_PROBE_LATENCY": "1" if latency else "0"}
    before, load_before, start = uptime(), load_average(), time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    point = {"topology": topology, "rate": rate, "batch_size": batch, "steps": steps, "warmup": warmup,
             "latency_probe": latency, "uptime_before": before, "uptime_after": uptime(),
             "load_1min": (load_before + load_average()) / 2, "wall_s": time.monotonic() - start,
             "command": " ".join(cmd), "returncode": proc.returncode}
    report_path = os.path.join(out, "emulated.json")
    if proc.returncode != 0 or not os.path.exists(report_path):
        point["error"] = proc.stderr[-3000:]
        return point
    report = json.load(open(report_path))
    point["network"] = {k: v for k, v in report["network"].items() if k != "qdiscs"}
    point["records"] = [{k: r[k] for k in KEEP if k in r} for r in report["records"]]
    return point


def refresh(sweep: dict, work: str) -> None:
    """Re-read every point's records from its run folder with today's KEEP (fields added later)."""
    for point in sweep["points"]:
        path = os.path.join(work, f"{point['topology']}-{point['rate']}-b{point['batch_size']}", "emulated.json")
        if os.path.exists(path):
            point["records"] = [{k: r[k] for k in KEEP if k in r} for r in json.load(open(path))["records"]]


def run_sweep(args: argparse.Namespace) -> dict:
    sweep = {"what": "bench emulated over topologies x rates x batches", "variants": args.variants,
             "steps": {"2x2": [args.warmup, args.steps], "4x2": [args.warmup_4x2, args.steps_4x2]},
             "points": []}
    done = {}
    if args.resume and os.path.exists(args.out):  # keep the points a cut-off sweep measured
        done = {(p["topology"], p["rate"], p["batch_size"]): p for p in json.load(open(args.out))["points"]
                if p.get("records")}
    for topology in args.topologies:
        for rate in args.rates:
            for i, batch in enumerate(args.batches):
                if (topology, rate, batch) in done:
                    sweep["points"].append(done[(topology, rate, batch)])
                    continue
                print(f"[{time.strftime('%H:%M:%S')}] {topology} {rate} batch {batch} ({uptime()})", flush=True)
                point = run_point(args, topology, rate, batch, latency=(i == 0))
                print(f"  {point['wall_s']:.0f} s, rc {point['returncode']}", flush=True)
                sweep["points"].append(point)
                save(sweep, args.out)
    return sweep


def save(payload: dict, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as handle:
        json.dump(payload, handle, indent=1)
    os.replace(path + ".tmp", path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from-json", help="refit a recorded sweep instead of running one")
    p.add_argument("--out", default="results/cost_sweep.json")
    p.add_argument("--fit-out", default="results/cost_sweep_fit.json")
    p.add_argument("--work", default="results/cost_sweep")
    p.add_argument("--topologies", type=lambda s: s.split(","), default=["2x2", "4x2"])
    p.add_argument("--rates", type=lambda s: s.split(","), default=["100mbit", "200mbit", "400mbit"])
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[128, 256])
    p.add_argument("--variants", default=VARIANTS)
    p.add_argument("--steps", type=int, default=10, help="2x2: steps per variant after warm-up (5 of them "
                   "metered or profiled, left out of the step times)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps-4x2", type=int, default=9, help="4x2 (8 ranks on 2 cores): fewer steps")
    p.add_argument("--warmup-4x2", type=int, default=2)
    p.add_argument("--refresh", action="store_true", help="re-read the records from --work's run folders")
    p.add_argument("--resume", action="store_true", help="keep the points already in --out")
    p.add_argument("--deadline-s", type=float, default=420)
    p.add_argument("--png", default="results/cost_extrapolation.png")
    p.add_argument("--train", default="batch=256", help="the points the model is fitted on: batch=B, "
                   "rate=R, topology=T (the rest is held out)")
    p.add_argument("--save-params", help="write the fitted parameters (dmt_fx.cost_params/1 JSON) here, "
                   "for AutoOptions(cost_params=PATH)")
    p.add_argument("--params-split", default="headline", help="the split whose fit --save-params writes")
    p.add_argument("--params-network", help='"TOPOLOGY RATE" of a probed point whose links --save-params '
                   "adds (default: none; plan='auto' keeps the Topology's links)")
    args = p.parse_args(argv)
    sweep = json.load(open(args.from_json)) if args.from_json else run_sweep(args)
    if args.refresh:
        refresh(sweep, args.work)
        save(sweep, args.out)
    splits = {"headline": evaluate_sweep(sweep, train=args.train),
              "rate split (compute from the training rate)": evaluate_sweep(sweep, train="rate=200mbit",
                                                                            compute="train"),
              "topology split (fit on 2x2, predict 4x2)": evaluate_sweep(sweep, train="topology=2x2"),
              "headline split, compute = CPU per step x ranks per core": evaluate_sweep(sweep, train=args.train,
                                                                                       source="cpu"),
              "rate split, compute = CPU x ranks per core at the training rate": evaluate_sweep(
                  sweep, train="rate=200mbit", compute="train", source="cpu"),
              "topology split, compute = CPU per step x ranks per core": evaluate_sweep(sweep, train="topology=2x2",
                                                                                       source="cpu")}
    splits["unfitted (kappas 1, no overhead)"] = unfitted(sweep)
    for name, result in splits.items():
        print(f"== {name}: train {result['train']}, params {fmt_params(result['params'])}")
        print(summary(result))
    print(table(splits["headline"]))
    extra = extrapolation(sweep, splits["headline"], args.png)
    save({"splits": splits, "extrapolation": extra}, args.fit_out)
    print(f"-> {args.fit_out}, {args.png}")
    if args.save_params:
        save_params(sweep, splits, args)
    return 0


def save_params(sweep: dict, splits: dict, args: argparse.Namespace) -> None:
    """The fit of one split as the JSON plan='auto' loads (dmt_fx.cost.params)."""
    if args.params_split not in splits:
        raise SystemExit(f"--params-split {args.params_split!r}: one of {sorted(splits)}")
    tiers = None
    if args.params_network:
        probed = {f"{p['topology']} {p['rate']}": sweep_tiers(p) for p in sweep["points"] if sweep_tiers(p)}
        if args.params_network not in probed:
            raise SystemExit(f"--params-network {args.params_network!r}: one of {sorted(probed)}")
        tiers = probed[args.params_network]
    params = cost_params(splits[args.params_split], tiers, split=args.params_split,
                         sweep=args.from_json or args.out, network=args.params_network)
    os.makedirs(os.path.dirname(args.save_params) or ".", exist_ok=True)
    params.save(args.save_params)
    print(f"-> {args.save_params} (fitted parameters, {args.params_split})")


def fmt_params(params: dict) -> str:
    return ", ".join(f"{k} {v * 1e3:.3f} ms" if k.endswith("_s") else f"{k} {v:.3f}" for k, v in params.items())


def summary(result: dict) -> str:
    worst = result["worst"] or {}
    pct = (lambda v: "n/a" if v is None else f"{v:.1f}%")
    return (f"  held-out MAPE {pct(result['held_out_mape_pct'])} over {result['held_out_points']} points "
            f"(lower-load half, {result.get('low_load_points')} points at load <= {result.get('low_load_max_load_1min') or 0:.1f}: "
            f"{pct(result['held_out_low_load_mape_pct'])}), in-sample "
            f"{pct(result['in_sample_mape_pct'])}; worst {worst.get('variant')} {worst.get('topology')} "
            f"{worst.get('rate')} b{worst.get('batch')}: {worst.get('error_pct', 0):+.1f}%")


def table(result: dict) -> str:
    lines = [f"{'topo':<5}{'rate':<9}{'batch':>6} {'variant':<17}{'load':>6}{'measured':>10}{'predicted':>11}"
             f"{'error':>8}  fit"]
    for r in sorted(result["rows"], key=lambda r: (r["topology"], r["rate"], r["batch"], r["variant"])):
        lines.append(f"{r['topology']:<5}{r['rate']:<9}{r['batch']:>6} {r['variant']:<17}{r['load_1min'] or 0:>6.1f}"
                     f"{r['measured_s'] * 1e3:>8.1f}ms{r['predicted_s'] * 1e3:>9.1f}ms{r['error_pct']:>+7.1f}%  "
                     f"{'held out' if r['held_out'] else 'train'}")
    return "\n".join(lines)


def unfitted(sweep: dict) -> dict:
    """The alpha-beta model with nothing fitted: compute from the breakdown, probe tiers, as is."""
    return evaluate_sweep(sweep, train="batch=-1", params={"kappa_compute": 1.0, "kappa_inter": 1.0,
                                                           "overhead_per_collective_s": 0.0})


def extrapolation(sweep: dict, fit: dict, png: str) -> dict:
    """Predicted DMT speedup at 8 ranks per host, 8..64 hosts, on the probes' latency model."""
    flat = [r for r in fit["rows"] if r["variant"] == "flat-table_wise" and r["topology"] == "2x2"
            and r["batch"] == 256]
    compute = sum(r["terms_s"]["compute"] for r in flat) / len(flat) if flat else 0.05
    intra = [t["intra"]["beta_Bps"] for t in fit["tiers"].values() if t["intra"]["beta_Bps"] < float("inf")]
    scenarios = {
        "emulated links scaled out": {"beta_intra_Bps": min(intra) if intra else 5e8, "beta_inter_Bps": 25e6,
                                      "t_compute_s": compute, "alpha_scale": 1.0,
                                      "alpha_note": "alphas as measured"},
        "data-center links (assumed)": {"beta_intra_Bps": 450e9, "beta_inter_Bps": 50e9, "t_compute_s": 2e-3,
                                        "alpha_scale": None, "alpha_note": "measured alpha form, 20 us/collective"}}
    bench = {"local_batch": 256, "features": 16, "dim": 64, "ids_per_feature": 1.0, "rows": 10_000}
    prod = {"local_batch": 2048, "features": 26, "dim": 128, "ids_per_feature": 1.0, "rows": 1_000_000}
    out = {}
    for name, sc in scenarios.items():
        model = bench if sc["alpha_scale"] == 1.0 else prod
        one = extrapolate_measured(sweep, fit, {name: sc}, model)
        if sc["alpha_scale"] is None:  # anchor the measured form at 20 us per cross-host collective
            lat = one["latency_model"]
            scale = 20e-6 / max(lat["a_collective_inter_s"] + lat["a_message_s"], 1e-12)
            one = extrapolate_measured(sweep, fit, {name: sc}, model, alpha_scale=scale)
        out[name] = one
    plot_measured({"ranks_per_host": 8, "scenarios": {k: v["scenarios"][k] for k, v in out.items()}}, png)
    return out


if __name__ == "__main__":
    sys.exit(main())
