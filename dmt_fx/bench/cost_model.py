"""An alpha-beta cost model of a training step, per link tier (a MODEL, not a measurement).

    t_step = t_compute
             + alpha_intra * intra_host_messages + intra_host_bytes / beta_intra
             + alpha_inter * cross_host_messages + cross_host_bytes / beta_inter
             [+ dense all-reduce term, optional]

per rank per step, where the messages and bytes are what ONE rank sends in one step
(forward and backward), as `dmt-fx bench traffic` measures them (TrafficMeter) or as
`analytic_traffic` derives them from the formulas of DMT.md and the one byte model
(`dmt_fx.bench.bytes`). The link tiers come from measurements (`tiers_from`) or from a
`Topology`, whose four link fields (intra/inter bandwidth in GB/s, latency in us) are the
links the prediction is for (`tiers_of`; `predict` and `breakdown` take either).

Assumptions, stated once:

* No overlap: collectives of a step run one after the other and never overlap compute
  or each other (so the model is pessimistic for pipelined/overlapped runtimes).
* Every message pays the tier's latency alpha once (serially), so an all-to-all over N
  ranks costs (N - 1) alphas (`alpha_per="message"`, the default: pessimistic for
  runtimes that post a collective's messages concurrently; `alpha_per="collective"` is
  the optimistic bound, one alpha per collective that touches the tier, from
  record["cross_host_collectives"] / record["intra_host_collectives"]); a rank's bytes on a tier go through one link of bandwidth
  beta (per-GPU NIC share for cross-host, per-GPU NVLink share intra-host).
* Ranks are symmetric: the step time is the per-rank mean traffic's time (skew ignored).
* t_compute is measured (single-process step of the model at the local batch,
  `measure_compute`) or given; it is the same on every rank.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Mapping, Union

from dmt_fx.bench import bytes as wire
from dmt_fx.compiler.auto_plan.steptime import Tier, Tiers, tiers_of
from dmt_fx.ir.topology import Topology

__all__ = ["Tier", "Tiers", "predict", "breakdown", "analytic_traffic", "measure_compute", "tiers_from", "tiers_of",
           "fit_alpha_beta", "least_squares"]


# Tier, Tiers and tiers_of live with the compiler's step-time arithmetic (plan="auto" ranks
# candidates with them; the compiler may not import dmt_fx.bench) and are re-exported here.
Links = Union[Tiers, Topology]


def _cross_bytes(record: Mapping[str, Any]) -> float:
    if "cross_host_id_bytes" in record or "cross_host_embedding_bytes" in record:
        return float(record.get("cross_host_id_bytes", 0.0)) + float(record.get("cross_host_embedding_bytes", 0.0))
    return float(record.get("cross_host_bytes", 0.0))


def breakdown(record: Mapping[str, Any], links: Links, t_compute_s: float | None = None, *,
              include_dense: bool = False, alpha_per: str = "message") -> dict[str, float]:
    """The terms of `predict`, in seconds: compute, intra_alpha, intra_beta, inter_alpha,
    inter_beta, dense, total. `links`: Tiers, or a Topology whose link fields give them.
    `t_compute_s` defaults to record["t_compute_s"] (else 0).

    include_dense: add DDP's dense gradient all-reduce as a ring, from the measured
    record["dense_allreduce_bytes"] (bytes one rank sends; else the older
    record["dense_allreduce_bytes_estimate"]) and record["dense_allreduce_messages"]
    (ring steps; default 2 (N - 1) with N = record["ranks"]): the ring runs at the speed
    of its slowest hop, the inter-host one when there are hosts >= 2 (record["hosts"],
    else parsed from record["topology"])."""
    tiers = tiers_of(links)
    compute = float(t_compute_s if t_compute_s is not None else record.get("t_compute_s", 0.0))
    if alpha_per not in ("message", "collective"):
        raise ValueError(f"alpha_per={alpha_per!r}: 'message' or 'collective'")
    unit = "messages" if alpha_per == "message" else "collectives"
    out = {"compute": compute,
           "intra_alpha": tiers.intra.alpha_s * float(record.get(f"intra_host_{unit}", 0.0)),
           "intra_beta": float(record.get("intra_host_bytes", 0.0)) / tiers.intra.beta_Bps,
           "inter_alpha": tiers.inter.alpha_s * float(record.get(f"cross_host_{unit}", 0.0)),
           "inter_beta": _cross_bytes(record) / tiers.inter.beta_Bps,
           "dense": 0.0}
    if include_dense:
        nbytes = float(record.get("dense_allreduce_bytes", record.get("dense_allreduce_bytes_estimate", 0.0)))
        hosts, ranks = _shape(record)
        messages = float(record.get("dense_allreduce_messages", 2 * (ranks - 1)))
        tier = tiers.inter if hosts > 1 else tiers.intra
        out["dense"] = tier.time(messages, nbytes)
    out["total"] = sum(out.values())
    return out


def predict(record: Mapping[str, Any], links: Links, t_compute_s: float | None = None, *,
            include_dense: bool = False, alpha_per: str = "message") -> float:
    """Predicted step time in seconds (see the module doc for the model and assumptions)."""
    return breakdown(record, links, t_compute_s, include_dense=include_dense, alpha_per=alpha_per)["total"]


def _shape(record: Mapping[str, Any]) -> tuple[int, int]:
    if "hosts" in record and "ranks" in record:
        return int(record["hosts"]), int(record["ranks"])
    h, l = (int(x) for x in str(record.get("topology", "1x1")).lower().split("x"))
    return h, h * l


# ---------------------------------------------------------------- fitting


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


def fit_alpha_beta(points: list[Mapping[str, float]], *, per: str = "collectives") -> dict[str, Any]:
    """alpha (seconds per `per`: collectives or messages) and beta (bytes/s) of one tier from
    timed points {per, "bytes", "seconds"}: seconds = alpha x per + bytes / beta, relative least
    squares, no intercept. Returns alpha_s, beta_Bps (inf when the bytes cost nothing measurable),
    the residuals per point (seconds and relative) and their RMS."""
    rows = [[float(p[per]), float(p["bytes"])] for p in points]
    seconds = [float(p["seconds"]) for p in points]
    alpha, per_byte = least_squares(rows, seconds)
    fitted = [alpha * r[0] + per_byte * r[1] for r in rows]
    rel = [(f - s) / s for f, s in zip(fitted, seconds)]
    return {"alpha_s": alpha, "beta_Bps": 1.0 / per_byte if per_byte > 0 else math.inf, "alpha_per": per,
            "fitted_s": fitted, "residuals_s": [f - s for f, s in zip(fitted, seconds)], "relative_residuals": rel,
            "rms_relative_residual": math.sqrt(statistics.fmean(r * r for r in rel)) if rel else 0.0}


# ---------------------------------------------------------------- analytic traffic (DMT.md)


def analytic_traffic(variant: str, hosts: int, ranks_per_host: int, *, batch: int, width: int,
                     features: int, ids_per_feature: float = 1.0, elem_bytes: int = wire.EMBEDDING_BYTES,
                     id_bytes: int = wire.ID_BYTES, length_bytes: int = wire.LENGTH_BYTES,
                     id_collectives: int = wire.ID_COLLECTIVES, compression: int = 1,
                     handshake: bool = True, peer_id_collectives: int = wire.PEER_ID_COLLECTIVES,
                     ) -> dict[str, float]:
    """Traffic ONE rank sends per step (forward + backward), from the formulas of DMT.md
    and the byte model of `dmt_fx.bench.bytes` (the widths default to it).

    batch B = local batch, width D = total pooled width (elements), features F, ids per
    feature k; the tables are spread evenly (each rank/tower owns an equal share of D and F).
    Ids: a rank's KJT is B F lengths and B F k ids; the id exchange is `id_collectives`
    collectives (TorchRec: handshake, lengths, values), and `handshake` adds the split sizes
    each KJT all-to-all sends to every destination. DMT's ids cross hosts in its own peer
    exchange instead: `peer_id_collectives` collectives (lengths, values), no handshake;
    inside the host they still go through TorchRec's KJT all-to-all. Embeddings: one forward
    all-to-all of pooled outputs and one backward all-to-all of their gradients, same bytes.

    variants:
    * "flat-table_wise": all-to-all over N = H L ranks: a fraction (H-1)/H of a rank's
      B D bytes crosses hosts, (L-1)/N stays inside; N-1 messages per collective
      ((H-1) L cross-host, L-1 intra-host).
    * "dmt-identity" / "dmt-c<c>" (or compression=c): peer all-to-all over the H ranks
      with the same local rank: ids and pooled outputs cross hosts once, H-1 messages
      per collective; the tower lookup inside the host is an all-to-all over L ranks on
      H B samples of 1/H of the features: B F (L-1)/L ids and B D (L-1)/L embedding
      elements per direction, L-1 messages per collective. A tower module of compression
      c divides the cross-host embedding bytes by c (the intra-host lookup is unchanged).
    """
    if variant.startswith("dmt-c"):
        compression = int(variant[len("dmt-c"):])
    H, L = hosts, ranks_per_host
    N = H * L
    ids = wire.kjt_bytes(batch, features, batch * features * ids_per_feature, length_bytes=length_bytes,
                         id_bytes=id_bytes)
    emb = wire.pooled_bytes(batch, width, elem_bytes=elem_bytes)
    split = wire.handshake_bytes() if handshake else 0  # per destination of each KJT all-to-all
    colls = id_collectives + 2  # id exchange + forward + backward embedding all-to-alls
    counts = {"intra_host_messages": colls * (L - 1),
              "cross_host_collectives": colls if H > 1 else 0, "intra_host_collectives": colls if L > 1 else 0}
    if variant == "flat-table_wise":
        return {"cross_host_id_bytes": ids * (H - 1) / H + split * (N - L),
                "cross_host_embedding_bytes": 2 * emb * (H - 1) / H,
                "cross_host_messages": colls * (N - L),
                "intra_host_bytes": (ids + 2 * emb) * (L - 1) / N + split * (L - 1), **counts}
    if variant == "dmt" or variant.startswith("dmt-"):
        peer_colls = peer_id_collectives + 2  # the lean peer exchange: no split handshake
        return {"cross_host_id_bytes": ids * (H - 1) / H,
                "cross_host_embedding_bytes": 2 * emb * (H - 1) / H / compression,
                "cross_host_messages": peer_colls * (H - 1),
                "intra_host_bytes": (ids + 2 * emb) * (L - 1) / L + split * (L - 1),
                **counts, "cross_host_collectives": peer_colls if H > 1 else 0}
    raise ValueError(f"no analytic traffic for variant {variant!r} (flat-table_wise, dmt-identity, dmt-c<c>)")


# ---------------------------------------------------------------- measured compute


def measure_compute(model, inputs: tuple, labels, *, steps: int = 20, warmup: int = 3, lr: float = 0.05) -> float:
    """Median seconds of one single-process training step (forward, BCE loss, backward, SGD)."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        out = model(*inputs)
        loss = F.binary_cross_entropy_with_logits(out, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------- tiers from measurements

_INTRA_BETA = ("intra_host_bandwidth_bytes_per_s", "intra_host_Bps", "intra_Bps", "intra_bytes_per_s", "intra_bandwidth_Bps", "intra_beta_Bps")
_INTRA_ALPHA = ("intra_host_alpha_s", "intra_alpha_s", "intra_latency_s")
_INTER_BETA = ("inter_host_rate_bytes_per_s", "inter_host_rate_bytes_per_s_per_rank", "inter_host_Bps", "inter_Bps", "cross_host_Bps", "inter_bytes_per_s", "inter_bandwidth_Bps",
               "inter_beta_Bps", "cross_host_bytes_per_s")
_INTER_ALPHA = ("inter_host_alpha_s", "inter_alpha_s", "cross_host_alpha_s", "inter_latency_s",
                "cross_host_latency_s")


def tiers_from(*sources: Mapping[str, Any]) -> Tiers | None:
    """Tiers from measured rates in the first source that has them: either
    {"tiers": {"intra": {"alpha_s", "beta_Bps"}, "inter": {...}}} or flat keys such as
    intra_host_Bps / intra_alpha_s and inter_host_Bps / inter_alpha_s (alpha defaults to 0
    when only bandwidths are given). None if no source has both bandwidths."""
    for src in sources:
        if not isinstance(src, Mapping):
            continue
        if isinstance(src.get("network"), Mapping):  # dmt_fx.bench.emulated's report: rates under "network"
            found = tiers_from(src["network"])
            if found is not None:
                return found
        nested = src.get("tiers")
        if isinstance(nested, Mapping) and "intra" in nested and "inter" in nested:
            return Tiers(Tier(float(nested["intra"].get("alpha_s", 0.0)), float(nested["intra"]["beta_Bps"])),
                         Tier(float(nested["inter"].get("alpha_s", 0.0)), float(nested["inter"]["beta_Bps"])))

        def first(keys, src=src):
            return next((float(src[k]) for k in keys if src.get(k) is not None), None)
        intra_b, inter_b = first(_INTRA_BETA), first(_INTER_BETA)
        if intra_b and inter_b and not math.isinf(intra_b + inter_b):
            return Tiers(Tier(first(_INTRA_ALPHA) or 0.0, intra_b), Tier(first(_INTER_ALPHA) or 0.0, inter_b))
    return None



# ---------------------------------------------------------------- the sweep's step model (issue 13 item 6)
#
#   t_step = kappa_compute x C + kappa_inter x W_inter + W_intra + W_dense + overhead x collectives
#
# C: the compute stages of a record's breakdown (`COMPUTE_STAGES`, profiler ranges); W_tier =
# alpha_tier x collectives + bytes / beta_tier with alpha and beta MEASURED by the probe's
# latency mode on the same network; W_dense: the dense all-reduce's bytes at the tier it
# crosses (torchrec-2d's weight sync stays inside a host); kappa_compute, kappa_inter and the
# overhead per collective are FITTED on the training part of a sweep (least squares, relative).

COMPUTE_STAGES = ("dense_forward", "backward", "lookup", "optimizer", "tower_module", "merge")
PARAMS = ("kappa_compute", "kappa_inter", "overhead_per_collective_s")


def compute_of(record: Mapping[str, Any]) -> float:
    """Seconds of a record's compute stages (its breakdown_s)."""
    stages = record.get("breakdown_s") or {}
    return float(sum(stages.get(name, 0.0) for name in COMPUTE_STAGES))


def sweep_tiers(point: Mapping[str, Any]) -> Tiers | None:
    """Tiers a sweep point's latency probe measured (network.probes.*.latency), shaped first."""
    probes = (point.get("network") or {}).get("probes") or {}
    for name in ("shaped", "unshaped"):
        fit = (probes.get(name) or {}).get("latency") or {}
        if "cross" in fit and "intra" in fit:
            return Tiers(Tier(fit["intra"]["alpha_s"], fit["intra"]["beta_Bps"]),
                         Tier(fit["cross"]["alpha_s"], fit["cross"]["beta_Bps"]))
    return None


def comm_terms(record: Mapping[str, Any], tiers: Tiers) -> dict[str, float]:
    """W_inter, W_intra and W_dense of one record (seconds), alpha per collective."""
    dense_tier = tiers.intra if record.get("variant") == "torchrec-2d" else tiers.inter
    dense_bytes = float(record.get("dense_allreduce_bytes", record.get("dense_allreduce_bytes_estimate", 0.0)))
    return {"inter": tiers.inter.time(float(record.get("cross_host_collectives", 0.0)), _cross_bytes(record)),
            "intra": tiers.intra.time(float(record.get("intra_host_collectives", 0.0)),
                                      float(record.get("intra_host_bytes", 0.0))),
            "dense": dense_tier.time(float(record.get("dense_allreduce_collectives", 0.0)), dense_bytes)}


def _collectives(record: Mapping[str, Any]) -> float:
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


def _samples(sweep: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One sample per (point, variant) with the tiers its (topology, rate) probe measured."""
    points = [p for p in sweep.get("points", []) if p.get("records")]
    probed = {(p["topology"], p["rate"]): sweep_tiers(p) for p in points if sweep_tiers(p) is not None}
    return [{"topology": p["topology"], "rate": p["rate"], "batch": int(p["batch_size"]), "variant": r["variant"],
             "load_1min": p.get("load_1min"), "record": r, "tiers": probed[(p["topology"], p["rate"])],
             "compute_s": compute_of(r)} for p in points if (p["topology"], p["rate"]) in probed
            for r in p["records"]]


def _in(sample: Mapping[str, Any], train: str) -> bool:
    key, _, value = train.partition("=")
    return str(sample[key]) == value


def _mape(rows: list[Mapping[str, Any]]) -> float | None:
    return statistics.fmean(abs(r["error_pct"]) for r in rows) if rows else None


def evaluate_sweep(sweep: Mapping[str, Any], *, train: str = "batch=256", compute: str = "own") -> dict[str, Any]:
    """Fit the step model on the sweep's samples matching `train` ("batch=256", "rate=200mbit",
    "topology=2x2"), predict every sample; errors held out and in sample.
    compute="own": C from each record's own breakdown (measured compute, modelled communication);
    "train": C from the training record of the same topology, batch and variant (a rate split:
    nothing of a held-out point's timing is used)."""
    samples = _samples(sweep)
    fitted = [s for s in samples if _in(s, train)]
    params = fit_step_model(fitted)
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
    loads = sorted(r["load_1min"] for r in held if r["load_1min"] is not None)
    quiet = [r for r in held if loads and r["load_1min"] is not None and r["load_1min"] <= loads[len(loads) // 2]]
    worst = max(held or rows, key=lambda r: abs(r["error_pct"]), default=None)
    return {"train": train, "compute": compute, "params": params, "rows": rows,
            "held_out_mape_pct": _mape(held), "in_sample_mape_pct": _mape([r for r in rows if not r["held_out"]]),
            "held_out_low_load_mape_pct": _mape(quiet), "held_out_points": len(held),
            "worst": worst and {k: worst[k] for k in ("topology", "rate", "batch", "variant", "error_pct")},
            "tiers": {f"{s['topology']} {s['rate']}": s["tiers"].to_dict() for s in samples}}
