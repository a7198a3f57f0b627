"""Fitting the cost model to measurements (issue 13 item 6): per-tier alpha and beta from the
probe's latency mode, and the step model fitted over a sweep of `dmt-fx bench emulated` runs.

`fit_alpha_beta`: one tier's alpha (seconds per collective) and beta (bytes/s) from timed
all-to-alls, fixed bytes over a varying count and one collective over varying bytes.
`evaluate_sweep`: the step model below fitted on part of a sweep (benchmarks/cost_sweep.py),
predicted on every point, with the error held out and in sample.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Mapping

from dmt_fx.bench.cost_model import Tier, Tiers

__all__ = ["COMPUTE_STAGES", "PARAMS", "comm_terms", "compute_of", "evaluate_sweep", "fit_alpha_beta",
           "fit_step_model", "least_squares", "predict_step", "sweep_tiers"]


def _cross_bytes(record: Mapping[str, Any]) -> float:
    if "cross_host_id_bytes" in record or "cross_host_embedding_bytes" in record:
        return float(record.get("cross_host_id_bytes", 0.0)) + float(record.get("cross_host_embedding_bytes", 0.0))
    return float(record.get("cross_host_bytes", 0.0))


def least_squares(rows: list[list[float]], targets: list[float], *, relative: bool = True,
                  nonnegative: bool = True) -> list[float]:
    """Coefficients c minimizing sum((rows . c - t) / t)^2 (relative: every point counts alike,
    a 1 ms point as much as a 100 ms one) or the plain squared error; with `nonnegative`, a
    column whose coefficient comes out negative is dropped (set to 0) and the rest refitted:
    a negative latency or cost per byte is noise, not physics."""
    import numpy as np

    a, t = np.asarray(rows, dtype=float), np.asarray(targets, dtype=float)
    w = 1.0 / np.where(t > 0, t, 1.0) if relative else np.ones_like(t)
    active = list(range(a.shape[1]))
    while active:
        coef = np.linalg.lstsq(a[:, active] * w[:, None], t * w, rcond=None)[0]
        if not nonnegative or (coef >= 0).all():
            out = [0.0] * a.shape[1]
            for i, c in zip(active, coef):
                out[i] = float(c)
            return out
        active.pop(int(np.argmin(coef)))
    return [0.0] * a.shape[1]


def _slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(slope, intercept) of a plain least-squares line; (0, mean) when x does not vary."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return slope, my - slope * mx


def fit_alpha_beta(points: list[Mapping[str, float]], *, per: str = "collectives") -> dict[str, Any]:
    """alpha (seconds per `per`: collectives or messages) and beta (bytes/s) of one tier from
    the probe's two series of timed points {per, "bytes", "seconds"}:

    * fixed bytes, varying count (the points at the bytes of the most-`per` point): alpha is
      the slope of seconds over count, whatever the bytes cost (Theil-Sen: the median of the
      pairwise slopes, so one point slowed by a busy core does not move it);
    * one collective, varying bytes: 1 / beta is the slope of seconds over bytes (plain least
      squares over the larger half of the sizes, past a shaper's burst); the intercept gives `credit_bytes`, the bytes that
      pass at line rate before the shaper bites (tc tbf's burst bucket, refilled between steps).

    The model seconds = alpha x count + max(0, bytes - credit) / beta is then checked against
    every point: residuals in seconds and relative, and their RMS."""
    most = max(points, key=lambda p: float(p[per]))
    fixed = [p for p in points if float(p["bytes"]) == float(most["bytes"])]
    single = sorted((p for p in points if float(p[per]) == float(min(float(q[per]) for q in points))),
                    key=lambda p: float(p["bytes"]))
    single = single[len(single) // 2:] if len(single) >= 4 else single  # the larger half: past the burst
    pairs = [(float(b["seconds"]) - float(a["seconds"])) / (float(b[per]) - float(a[per]))
             for i, a in enumerate(fixed) for b in fixed[i + 1:] if float(b[per]) != float(a[per])]
    alpha = max(0.0, statistics.median(pairs)) if pairs else 0.0
    per_byte, intercept = _slope([float(p["bytes"]) for p in single], [float(p["seconds"]) for p in single])
    beta = 1.0 / per_byte if per_byte > 0 else math.inf
    unit = float(min(float(q[per]) for q in points))
    credit = max(0.0, (alpha * unit - intercept) * beta) if per_byte > 0 else 0.0
    fitted = [alpha * float(p[per]) + (max(0.0, float(p["bytes"]) - credit) / beta if per_byte > 0 else 0.0)
              for p in points]
    seconds = [float(p["seconds"]) for p in points]
    rel = [(f - s) / s for f, s in zip(fitted, seconds)]
    return {"alpha_s": alpha, "beta_Bps": beta, "alpha_per": per, "credit_bytes": credit, "fitted_s": fitted,
            "residuals_s": [f - s for f, s in zip(fitted, seconds)], "relative_residuals": rel,
            "rms_relative_residual": math.sqrt(statistics.fmean(r * r for r in rel)) if rel else 0.0}



# ---------------------------------------------------------------- the sweep's step model (issue 13 item 6)
#
#   t_step = kappa_compute x C + kappa_inter x W_inter + W_intra + W_dense + overhead x collectives
#
# C: measured compute: the compute stages of a record's breakdown (`COMPUTE_STAGES`, profiler
# ranges; torchrec-2d's replica sync too: a CPU-bound all-reduce of the shards, which the probe's
# small all-to-alls cannot see), or the rank's process CPU per step x ranks per core; W_tier =
# alpha_tier x collectives + bytes / beta_tier with alpha and beta MEASURED by the probe's
# latency mode on the same network; W_dense: the dense all-reduce's bytes at the tier it
# crosses (torchrec-2d's weight sync stays inside a host); kappa_compute, kappa_inter and the
# overhead per collective are FITTED on the training part of a sweep (least squares, relative).

COMPUTE_STAGES = ("dense_forward", "backward", "lookup", "optimizer", "tower_module", "merge", "replica_sync")
PARAMS = ("kappa_compute", "kappa_inter", "overhead_per_collective_s")


def compute_of(record: Mapping[str, Any], source: str = "breakdown", cores: int = 2) -> float:
    """Measured compute seconds of a record: its breakdown's compute stages, or ("cpu") its
    median process CPU per step x ranks per core (the ranks share `cores` cores)."""
    if source == "cpu":
        return float(record.get("step_cpu_median_s", 0.0)) * max(1.0, int(record.get("ranks", 1)) / cores)
    stages = record.get("breakdown_s") or {}
    return float(sum(stages.get(name, 0.0) for name in COMPUTE_STAGES))


def sweep_tiers(point: Mapping[str, Any]) -> Tiers | None:
    """Tiers a sweep point's latency probe measured (network.probes.*.latency), shaped first;
    refitted from the probe's timed points when it kept them (today's `fit_alpha_beta`)."""
    probes = (point.get("network") or {}).get("probes") or {}
    for name in ("shaped", "unshaped"):
        fit = (probes.get(name) or {}).get("latency") or {}
        if "cross" in fit and "intra" in fit:
            intra, cross = ({**f, **fit_alpha_beta(f["points"])} if f.get("points") else f
                            for f in (fit["intra"], fit["cross"]))
            return Tiers(Tier(intra["alpha_s"], intra["beta_Bps"]), Tier(cross["alpha_s"], cross["beta_Bps"]))
    return None


def comm_terms(record: Mapping[str, Any], tiers: Tiers) -> dict[str, float]:
    """W_inter, W_intra and W_dense of one record (seconds), alpha per collective."""
    # the dense arch's gradients cross hosts (DDP over every rank); what a variant adds to them
    # (tower modules: DDP over the host's ranks; 2D: the replica sync, in C) stays inside a host
    total = float(record.get("dense_allreduce_bytes", record.get("dense_allreduce_bytes_estimate", 0.0)))
    cross = min(total, float(record.get("dense_cross_host_bytes", total)))
    return {"inter": tiers.inter.time(float(record.get("cross_host_collectives", 0.0)), _cross_bytes(record)),
            "intra": tiers.intra.time(float(record.get("intra_host_collectives", 0.0)),
                                      float(record.get("intra_host_bytes", 0.0))),
            "dense": tiers.inter.time(float(record.get("dense_allreduce_collectives", 0.0)), cross)
            + (total - cross) / tiers.intra.beta_Bps if record.get("variant") != "torchrec-2d" else 0.0}


def _collectives(record: Mapping[str, Any]) -> float:
    """Collective calls per step: a flat all-to-all over every rank is ONE call that touches both
    tiers (the meter's `collectives`), not one per tier."""
    if "collectives" in record:
        return float(record["collectives"])
    return float(record.get("cross_host_collectives", 0.0)) + float(record.get("intra_host_collectives", 0.0))


def fit_step_model(samples: list[Mapping[str, Any]]) -> dict[str, float]:
    """PARAMS from samples {"record", "tiers", "compute_s"} (training points only)."""
    if not samples:
        return dict.fromkeys(PARAMS, 0.0)
    rows, targets = [], []
    for s in samples:
        w = comm_terms(s["record"], s["tiers"])
        rows.append([s["compute_s"], w["inter"], _collectives(s["record"])])
        targets.append(float(s["record"]["step_time_median_s"]) - w["intra"] - w["dense"])
    return dict(zip(PARAMS, least_squares(rows, targets)))


def predict_step(record: Mapping[str, Any], tiers: Tiers, compute_s: float, params: Mapping[str, float]
                 ) -> dict[str, float]:
    """The step model's terms and total (seconds) for one record."""
    w = comm_terms(record, tiers)
    out = {"compute": params["kappa_compute"] * compute_s, "inter": params["kappa_inter"] * w["inter"],
           "intra": w["intra"], "dense": w["dense"],
           "overhead": params["overhead_per_collective_s"] * _collectives(record)}
    out["total"] = sum(out.values())
    return out


def _samples(sweep: Mapping[str, Any], source: str) -> list[dict[str, Any]]:
    """One sample per (point, variant) with the tiers its (topology, rate) probe measured; the
    dense bytes that cross hosts are the flat plans' (the dense arch's) at the same point."""
    points = [p for p in sweep.get("points", []) if p.get("records")]
    probed = {(p["topology"], p["rate"]): sweep_tiers(p) for p in points if sweep_tiers(p) is not None}
    out = []
    for p in points:
        if (p["topology"], p["rate"]) not in probed:
            continue
        flat = [r.get("dense_allreduce_bytes", 0.0) for r in p["records"] if r["variant"] == "flat-table_wise"]
        for r in p["records"]:
            record = {**r, "dense_cross_host_bytes": flat[0]} if flat else r
            out.append({"topology": p["topology"], "rate": p["rate"], "batch": int(p["batch_size"]),
                        "variant": r["variant"], "load_1min": p.get("load_1min"), "record": record,
                        "tiers": probed[(p["topology"], p["rate"])], "compute_s": compute_of(r, source)})
    return out


def _in(sample: Mapping[str, Any], train: str) -> bool:
    key, _, value = train.partition("=")
    return str(sample[key]) == value


def _mape(rows: list[Mapping[str, Any]]) -> float | None:
    return statistics.fmean(abs(r["error_pct"]) for r in rows) if rows else None


def evaluate_sweep(sweep: Mapping[str, Any], *, train: str = "batch=256", compute: str = "own",
                   source: str = "breakdown", params: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Fit the step model on the sweep's samples matching `train` ("batch=256", "rate=200mbit",
    "topology=2x2"), predict every sample; errors held out and in sample.
    compute="own": C from each record's own breakdown (measured compute, modelled communication);
    "train": C from the training record of the same topology, batch and variant (a rate split:
    nothing of a held-out point's timing is used). source: "breakdown" or "cpu" (`compute_of`).
    `params` given: predict with them, nothing fitted."""
    samples = _samples(sweep, source)
    fitted = [s for s in samples if _in(s, train)]
    params = dict(params) if params is not None else fit_step_model(fitted)
    by_key = {(s["topology"], s["batch"], s["variant"]): s["compute_s"] for s in fitted}
    rows = []
    for s in samples:
        c = s["compute_s"] if compute == "own" or _in(s, train) else by_key.get((s["topology"], s["batch"], s["variant"]))
        if c is None:
            continue
        terms = predict_step(s["record"], s["tiers"], c, params)
        measured = float(s["record"]["step_time_median_s"])
        rows.append({k: s[k] for k in ("topology", "rate", "batch", "variant", "load_1min")} |
                    {"measured_s": measured, "predicted_s": terms["total"], "terms_s": terms,
                     "held_out": not _in(s, train), "error_pct": (terms["total"] / measured - 1) * 100})
    held = [r for r in rows if r["held_out"]]
    loads = sorted({r["load_1min"] for r in held if r["load_1min"] is not None})  # one per point
    quiet = [r for r in held if r["load_1min"] is not None and r["load_1min"] in loads[:max(1, len(loads) // 2)]]
    worst = max(held or rows, key=lambda r: abs(r["error_pct"]), default=None)
    return {"train": train, "compute": compute, "source": source, "params": params, "rows": rows,
            "held_out_mape_pct": _mape(held), "in_sample_mape_pct": _mape([r for r in rows if not r["held_out"]]),
            "held_out_low_load_mape_pct": _mape(quiet), "low_load_points": len(quiet),
            "low_load_max_load_1min": loads[max(1, len(loads) // 2) - 1] if loads else None, "held_out_points": len(held),
            "worst": worst and {k: worst[k] for k in ("topology", "rate", "batch", "variant", "error_pct")},
            "tiers": {f"{s['topology']} {s['rate']}": s["tiers"].to_dict() for s in samples}}
