"""The sweep's step model: the one model (`dmt_fx.cost.steptime`) fitted on
part of a sweep of `dmt-fx bench emulated` runs (benchmarks/cost_sweep.py), predicted on
every point, with the error held out and in sample.

    t_step = kappa_compute x C + kappa_inter x W_inter + W_intra + W_dense + overhead x collectives

C: measured compute: the compute stages of a record's breakdown (`COMPUTE_STAGES`, profiler
ranges; torchrec-2d's replica sync too: a CPU-bound all-reduce of the shards, which the probe's
small all-to-alls cannot see), or the rank's process CPU per step x ranks per core; W_tier =
alpha_tier x collectives + bytes / beta_tier with alpha and beta MEASURED by the probe's
latency mode on the same network; W_dense: the dense all-reduce's bytes at the tier it
crosses (torchrec-2d's weight sync stays inside a host); kappa_compute, kappa_inter and the
overhead per collective are FITTED on the training part of a sweep (least squares, relative):
`cost_params` turns a fit into the CostParams that plan="auto" loads.
"""

from __future__ import annotations

import statistics
from typing import Any, Mapping, Sequence

from dmt_fx.cost.fit import fit_alpha_beta, least_squares
from dmt_fx.cost.links import Tier, TierLoad, Tiers, per_collective
from dmt_fx.cost.params import CostParams
from dmt_fx.cost.steptime import StepLoad, cross_bytes, step_terms

__all__ = ["COMPUTE_STAGES", "PARAMS", "comm_terms", "compute_of", "cost_params", "evaluate_sweep",
           "fit_step_model", "predict_step", "sweep_load", "sweep_tiers"]

COMPUTE_STAGES = ("dense_forward", "backward", "lookup", "optimizer", "tower_module", "merge", "replica_sync")
PARAMS = ("kappa_compute", "kappa_inter", "overhead_per_collective_s")
_UNIT = CostParams()  # W_* at face value: what the fit's columns are


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


def sweep_load(record: Mapping[str, Any], compute_s: float) -> StepLoad:
    """A sweep record as the one model's StepLoad: its sparse exchanges per tier (alpha per
    collective, as the probe measures it), its dense all-reduce and its collective calls."""
    # the dense arch's gradients cross hosts (DDP over every rank); what a variant adds to them
    # (tower modules: DDP over the host's ranks; 2D: the replica sync, in C) stays inside a host
    total = float(record.get("dense_allreduce_bytes", record.get("dense_allreduce_bytes_estimate", 0.0)))
    cross = min(total, float(record.get("dense_cross_host_bytes", total)))
    dense = record.get("variant") != "torchrec-2d"  # 2D's weight sync is compute here (its replica_sync stage)
    return StepLoad(compute_s,
                    intra=TierLoad(0.0, float(record.get("intra_host_bytes", 0.0)),
                                   float(record.get("intra_host_collectives", 0.0))),
                    cross=TierLoad(0.0, cross_bytes(record), float(record.get("cross_host_collectives", 0.0))),
                    dense_cross=TierLoad(0.0, cross, float(record.get("dense_allreduce_collectives", 0.0)))
                    if dense else TierLoad(),
                    dense_intra=TierLoad(0.0, total - cross) if dense else TierLoad(),
                    collectives=_collectives(record))


def comm_terms(record: Mapping[str, Any], tiers: Tiers) -> dict[str, float]:
    """W_inter, W_intra and W_dense of one record (seconds), alpha per collective."""
    terms = step_terms(sweep_load(record, 0.0), per_collective(tiers), params=_UNIT)
    return {"inter": terms["cross"], "intra": terms["intra"], "dense": terms["dense"]}


def _collectives(record: Mapping[str, Any]) -> float:
    """Collective calls per step: a flat all-to-all over every rank is ONE call that touches both
    tiers (the meter's `collectives`), not one per tier."""
    if "collectives" in record:
        return float(record["collectives"])
    return float(record.get("cross_host_collectives", 0.0)) + float(record.get("intra_host_collectives", 0.0))


def fit_step_model(samples: Sequence[Mapping[str, Any]]) -> dict[str, float]:
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
    """The step model's terms and total (seconds) for one record: `step_terms` with `params`."""
    fitted = CostParams.of({name: params[name] for name in PARAMS})
    terms = step_terms(sweep_load(record, compute_s), per_collective(tiers), params=fitted)
    return {"compute": terms["compute"], "inter": terms["cross"], "intra": terms["intra"], "dense": terms["dense"],
            "overhead": terms["overhead"], "total": terms["total"]}


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


def _mape(rows: Sequence[Mapping[str, Any]]) -> float | None:
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


def cost_params(result: Mapping[str, Any], tiers: Tiers | None = None, **source: Any) -> CostParams:
    """The CostParams of an `evaluate_sweep` result (its fitted kappas and overhead); `tiers`:
    a probe's measured links to go with them (alpha per collective, as `sweep_tiers` gives)."""
    summary = {k: result.get(k) for k in ("train", "compute", "source", "held_out_mape_pct", "in_sample_mape_pct",
                                          "held_out_points")}
    return CostParams.of(result["params"], None if tiers is None else per_collective(tiers), {**summary, **source})
