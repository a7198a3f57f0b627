"""Smoke test of benchmarks/quality.py: the --quick run finishes and writes a well-formed JSON.

No assertions on the quality targets (those need the full run; see the benchmark's docstring).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("flat", "dmt-identity", "dmt-tm-learned", "dmt-tm-random")


@pytest.mark.distributed
def test_quality_quick(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "quality.py"), "--quick",
                           "--seeds", "2", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads((out / "quality.json").read_text())
    assert (out / "quality_curves.png").stat().st_size > 0

    for key in ("config", "variants", "ari", "towers", "planted_groups", "targets"):
        assert key in result, key
    for name in VARIANTS:
        v = result["variants"][name]
        assert math.isfinite(v["ne"]) and v["ne"] > 0, (name, v["ne"])
        assert math.isfinite(v["auc"]) and 0.0 <= v["auc"] <= 1.0, (name, v["auc"])
        assert math.isfinite(v["rel_ne_vs_flat"])
        assert v["curve"] and all(len(p) == 3 and all(math.isfinite(x) for x in p) for p in v["curve"])
        seeds = [r["seed"] for r in v["per_seed"]]
        assert seeds == ([0] if name == "dmt-identity" else [0, 1]), (name, seeds)
        assert abs(v["ne"] - sum(r["ne"] for r in v["per_seed"]) / len(seeds)) < 1e-12  # the mean
        assert math.isfinite(v["ne_std"]) and set(v["rel_ne_vs_flat_at_step"]) == set(v["ne_at_step"])
    assert result["variants"]["dmt-identity"]["rel_ne_vs_flat"] == 0.0  # same seed, exact
    assert result["variants"]["flat"]["rel_ne_vs_flat"] == 0.0
    for kind in ("learned", "random"):
        assert math.isfinite(result["ari"][kind]) and -1.0 <= result["ari"][kind] <= 1.0
        features = sorted(f for tower in result["towers"][kind] for f in tower)
        assert features == sorted(f for g in result["planted_groups"] for f in g)
    for target in result["targets"].values():
        assert set(target) >= {"value", "target", "met"} and isinstance(target["met"], bool)


@pytest.mark.distributed
def test_quality_sequence_task(tmp_path):
    """`--task sequences`: the sequence task, its NE against flat per variant."""
    out = tmp_path / "quality_sequences.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "quality.py"), "--task", "sequences",
                           "--steps", "20", "--seeds", "1", "--heldout", "1000", "--eval-every", "10",
                           "--variants", "dmt-seqmean-c1,dmt-seqattn-c4", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert set(result["variants"]) == {"flat", "dmt-seqmean-c1", "dmt-seqattn-c4"}
    for name, v in result["variants"].items():
        assert math.isfinite(v["ne_mean"]) and v["ne_mean"] > 0, name
    assert abs(result["variants"]["dmt-seqmean-c1"]["ne_vs_flat_mean"]) < 1e-4  # the model's own mean: exact


def test_ari_auc_and_ne_from_the_libraries():
    """The benchmarks' metrics (dmt_fx.bench.metrics): AUC from torchmetrics, NE from TorchRec."""
    import numpy as np

    from dmt_fx.bench.metrics import adjusted_rand_index, auc, normalized_entropy

    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0
    # Hubert-Arabie example: a = [0,0,0,1,1,1], b = [0,0,1,1,2,2] -> ARI = 0.2424...
    assert abs(adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) - 0.24242424) < 1e-6
    y = np.array([0, 0, 1, 1], dtype=float)
    assert auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert np.isnan(auc(np.ones(4), np.arange(4.0)))
    assert abs(normalized_entropy(y, np.zeros(4)) - 1.0) < 1e-12  # predicting the base rate
    logits = np.array([-2.0, 0.5, 1.0, 3.0])  # against log loss over the base rate's entropy, by hand
    loss = np.mean(np.logaddexp(0.0, logits) - y * logits)
    assert abs(normalized_entropy(y, logits) - loss / np.log(2.0)) < 1e-12
