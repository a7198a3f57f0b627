"""The cost model's fitting code (issue 13 item 6) on synthetic and recorded data: no network."""

from __future__ import annotations

import json
import math
import os

import pytest

from dmt_fx.bench.cost_model import (
    Tier,
    Tiers,
    evaluate_sweep,
    fit_alpha_beta,
    fit_step_model,
    least_squares,
    predict_step,
)

RECORDED = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "recorded", "cost_sweep.json")


def _probe_points(alpha: float, beta: float, noise: tuple[float, ...] = ()) -> list[dict]:
    """The probe's grid (fixed bytes, k collectives; one collective, varying bytes) timed by a known tier."""
    grid = [(k, 65536) for k in (1, 2, 4, 8, 16)] + [(1, b) for b in (4096, 65536, 262144, 1 << 20)]
    wiggle = list(noise) + [0.0] * len(grid)
    return [{"collectives": k, "bytes": b, "seconds": (alpha * k + b / beta) * (1 + e)}
            for (k, b), e in zip(grid, wiggle)]


def test_fit_alpha_beta_recovers_the_tier():
    fit = fit_alpha_beta(_probe_points(4e-4, 25e6))
    assert fit["alpha_s"] == pytest.approx(4e-4, rel=1e-6)
    assert fit["beta_Bps"] == pytest.approx(25e6, rel=1e-6)
    assert fit["rms_relative_residual"] < 1e-9


def test_fit_alpha_beta_reports_residuals_of_noisy_points():
    noise = (0.05, -0.05, 0.05, -0.05, 0.05, -0.05, 0.05, -0.05, 0.0)
    fit = fit_alpha_beta(_probe_points(4e-4, 25e6, noise))
    assert fit["alpha_s"] == pytest.approx(4e-4, rel=0.1)
    assert fit["beta_Bps"] == pytest.approx(25e6, rel=0.1)
    assert 0.01 < fit["rms_relative_residual"] < 0.06
    assert len(fit["residuals_s"]) == 9


def test_latency_dominated_points_weigh_as_much_as_bandwidth_ones():
    """Relative least squares: the 16-collective points (latency) decide alpha even next to
    100x longer bandwidth points; a plain fit would let the big points' noise swamp alpha."""
    points = _probe_points(2e-4, 25e6, noise=(0, 0, 0, 0, 0, 0, 0, 0, 0.03))
    assert fit_alpha_beta(points)["alpha_s"] == pytest.approx(2e-4, rel=0.02)


def test_free_bytes_give_infinite_beta_not_a_negative_one():
    points = [{"collectives": k, "bytes": b, "seconds": 3e-4 * k * (1 - 0.01 * (b > 60000))}
              for k, b in ((1, 1000), (2, 70000), (4, 1000), (1, 70000))]
    fit = fit_alpha_beta(points)
    assert math.isinf(fit["beta_Bps"]) and fit["alpha_s"] > 0


def test_least_squares_drops_negative_columns():
    rows = [[1.0, 0.0], [2.0, 1.0], [3.0, 2.0]]
    coef = least_squares(rows, [1.0, 1.9, 2.8], relative=False)
    assert coef[1] == 0.0 and coef[0] > 0
    free = least_squares(rows, [1.0, 1.9, 2.8], relative=False, nonnegative=False)
    assert free[1] < 0


TIERS = {"100mbit": Tiers(Tier(3e-4, 5e8), Tier(4e-4, 12.5e6)), "400mbit": Tiers(Tier(3e-4, 5e8), Tier(4e-4, 50e6))}
TRUE = {"kappa_compute": 1.6, "kappa_inter": 1.3, "overhead_per_collective_s": 2e-3}
VARIANTS = {"flat-table_wise": (1.1e6, 5, 5.5e5, 5), "dmt-identity": (1.1e6, 4, 1.1e6, 5),
            "dmt-c4": (3.1e5, 4, 1.1e6, 5), "flat-grid_shard": (1.2e6, 5, 2.2e6, 5)}


def _record(variant: str, batch: int, compute_s: float) -> dict:
    cross_b, cross_c, intra_b, intra_c = VARIANTS[variant]
    return {"variant": variant, "cross_host_bytes": cross_b * batch / 256, "cross_host_collectives": cross_c,
            "intra_host_bytes": intra_b * batch / 256, "intra_host_collectives": intra_c,
            "dense_allreduce_bytes": 2.3e5, "dense_allreduce_collectives": 6,
            "breakdown_s": {"dense_forward": compute_s / 3, "backward": compute_s / 2, "optimizer": compute_s / 6,
                            "output_dist": 0.05}}


def _synthetic_sweep(truth: dict) -> dict:
    """Points whose step times follow the model exactly with `truth`'s parameters."""
    points = []
    for rate, tiers in TIERS.items():
        shaped = {"latency": {t: {"alpha_s": getattr(tiers, n).alpha_s, "beta_Bps": getattr(tiers, n).beta_Bps}
                              for t, n in (("intra", "intra"), ("cross", "inter"))}}
        for batch in (128, 256):
            records = []
            for i, variant in enumerate(VARIANTS):
                record = _record(variant, batch, 0.02 * batch / 128 + 0.004 * i)
                compute = sum(v for k, v in record["breakdown_s"].items() if k != "output_dist")
                record["step_time_median_s"] = predict_step(record, tiers, compute, truth)["total"]
                records.append(record)
            points.append({"topology": "2x2", "rate": rate, "batch_size": batch, "load_1min": 2.0 + batch / 128,
                           "network": {"probes": {"shaped": shaped}}, "records": records})
    return {"points": points}


def test_the_step_model_is_recovered_and_predicts_held_out_points():
    result = evaluate_sweep(_synthetic_sweep(TRUE), train="batch=256")
    for name, value in TRUE.items():
        assert result["params"][name] == pytest.approx(value, rel=1e-6)
    assert result["held_out_points"] == 8
    assert result["held_out_mape_pct"] < 1e-6 and result["in_sample_mape_pct"] < 1e-6


def test_a_rate_split_takes_compute_from_the_training_rate():
    result = evaluate_sweep(_synthetic_sweep(TRUE), train="rate=400mbit", compute="train")
    held = [r for r in result["rows"] if r["held_out"]]
    assert {r["rate"] for r in held} == {"100mbit"} and len(held) == 8
    assert result["held_out_mape_pct"] < 1e-6


def test_the_error_is_measured_not_assumed():
    """A sweep that does not follow the model (compute 30% higher at batch 128) shows it held out."""
    sweep = _synthetic_sweep(TRUE)
    for point in sweep["points"]:
        if point["batch_size"] == 128:
            for record in point["records"]:
                record["step_time_median_s"] *= 1.3
    result = evaluate_sweep(sweep, train="batch=256")
    assert result["in_sample_mape_pct"] < 1e-6
    assert result["held_out_mape_pct"] == pytest.approx(100 * (1 - 1 / 1.3), rel=1e-6)
    assert result["worst"]["batch"] == 128


def test_fit_uses_only_training_points():
    sweep = _synthetic_sweep(TRUE)
    for point in sweep["points"]:
        if point["batch_size"] == 128:
            for record in point["records"]:
                record["step_time_median_s"] *= 5  # would move every parameter if it were fitted on
    assert fit_step_model([]) == {k: 0.0 for k in TRUE}
    assert evaluate_sweep(sweep, train="batch=256")["params"]["kappa_compute"] == pytest.approx(1.6)


@pytest.mark.skipif(not os.path.exists(RECORDED), reason="no recorded sweep")
def test_recorded_sweep_refits_offline():
    sweep = json.load(open(RECORDED))
    result = evaluate_sweep(sweep, train="batch=256")
    assert result["held_out_points"] > 0 and result["held_out_mape_pct"] is not None
    assert all(r["predicted_s"] > 0 for r in result["rows"])
