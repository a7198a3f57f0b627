"""Fitting the cost model's links to measurements: per-tier alpha and beta from the probe's
latency mode (`fit_alpha_beta`), the latency form of a sweep's probes (`latency_model`), and
the least squares the sweep's step model is fitted with (`dmt_fx.cost.sweep`).

`fit_alpha_beta`: one tier's alpha (seconds per collective) and beta (bytes/s) from timed
all-to-alls, fixed bytes over a varying count and one collective over varying bytes.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Mapping

__all__ = ["fit_alpha_beta", "latency_model", "least_squares"]


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


def latency_model(sweep: Mapping[str, Any]) -> dict[str, Any]:
    """The latency form of a sweep's shaped probes: per tier, one collective over n ranks costs
    a_collective + a_message x (n - 1). a_message is the slope over the cross-host probes of
    two group sizes (2x2: n = 2, 4x2: n = 4), a_collective per tier its intercept (one group
    size: no slope, every collective costs the same)."""
    def alpha(tier: Mapping[str, Any]) -> float:  # refitted from the probe's points when it kept them
        return fit_alpha_beta(tier["points"])["alpha_s"] if tier.get("points") else tier["alpha_s"]

    cross, intra = [], []
    for point in sweep.get("points", []):
        fit = ((point.get("network") or {}).get("probes", {}).get("shaped") or {}).get("latency") or {}
        if "cross" in fit:
            cross.append((fit["cross"]["group_size"], alpha(fit["cross"]), point["topology"], point["rate"]))
        if "intra" in fit:
            intra.append((fit["intra"]["group_size"], alpha(fit["intra"])))
    if len({n for n, *_ in cross}) >= 2:
        a_coll, a_msg = least_squares([[1.0, n - 1.0] for n, *_ in cross], [a for _, a, *_ in cross], relative=False)
    else:
        a_coll, a_msg = (statistics.fmean(a for _, a, *_ in cross) if cross else 0.0), 0.0
    intra_n2 = statistics.fmean(a for n, a in intra if n == 2) if intra else a_coll + a_msg
    return {"a_message_s": a_msg, "a_collective_inter_s": a_coll,
            "a_collective_intra_s": max(0.0, intra_n2 - a_msg),
            "probes_cross": [{"group_size": n, "alpha_per_collective_s": a, "topology": t, "rate": r}
                             for n, a, t, r in cross],
            "probes_intra_alpha_per_collective_s": [a for _, a in intra]}
