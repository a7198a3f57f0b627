"""Kept affinity against model quality: where to put plan="auto"'s default quality budget.

The quality budget of `dmt_fx.compiler.auto_plan` is the share of the model's pairwise
interaction affinity that a compressing plan must keep inside towers. This program measures
what a lower share costs, on benchmarks/quality.py's generator and model (16 features in 4
planted groups, torchrec DLRM, dot tower modules, c = 2, 4 towers):

  1. train flat for --steps steps (seed s), measure the interaction affinity on the
     calibration batch (what plan="auto" measures);
  2. plans between the planted groups (keep everything) and random towers: the planted
     groups with k = 1, 2, 4 seeded swaps of two features of different groups;
  3. for each plan: its kept affinity (within_tower_affinity) and the held-out NE of the
     DMT-TM model trained on the same batches, relative to flat's.

  python benchmarks/quality_budget.py --steps 1000 --seeds 1 --eval-every 250   # the README figures (15 min here)
  (defaults are quality.py's: 6000 steps, 3 seeds); writes results/quality_budget.json
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import quality as q  # noqa: E402

import dmt_fx  # noqa: E402
from dmt_fx.compiler.affinity import interaction_affinity, within_tower_affinity  # noqa: E402

SWAPS = (0, 1, 2, 4)


def swapped(planted: list[list[str]], k: int, seed: int) -> list[list[str]]:
    """The planted groups after k swaps of two features of different groups (seeded)."""
    rng = np.random.default_rng(seed)
    groups = [list(g) for g in planted]
    for _ in range(k):
        a, b = rng.choice(len(groups), size=2, replace=False)
        i, j = rng.integers(len(groups[a])), rng.integers(len(groups[b]))
        groups[a][i], groups[b][j] = groups[b][j], groups[a][i]
    return groups


def main(argv=None) -> dict:
    args = q.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("dmt_fx").setLevel(logging.ERROR)
    start = time.perf_counter()
    study = q.prepare(args)
    flats = {f"flat@{s}": study.fresh(s) for s in study.seeds}
    flat_curves = study.train_models(flats)
    affinity = interaction_affinity(flats[f"flat@{args.seed}"], dmt_fx.dmt_result(
        dmt_fx.transform(study.fresh(), q.TOPOLOGY, example_inputs=study.example)).sites, study.calib_batch)
    plans = {f"swap{k}": swapped(study.planted, k, args.seed + k) for k in SWAPS}
    random_gm = dmt_fx.transform(study.fresh(), q.TOPOLOGY, partitioner="random", example_inputs=study.example,
                                 seed=args.seed)
    plans["random"] = [list(t.features) for t in dmt_fx.tower_plan(random_gm).towers]
    models = {}
    for seed in study.seeds:
        for name, groups in plans.items():
            torch.manual_seed(seed + 1)
            plan = q.canonical({"towers": [{"features": g} for g in groups]}, study.names)
            models[f"{name}@{seed}"] = dmt_fx.transform(study.fresh(seed), q.TOPOLOGY, plan=plan,
                                                       tower_module=args.tower_module,
                                                       compression=args.compression, example_inputs=study.example)
    curves = study.train_models(models)
    flat_ne = float(np.mean([flat_curves[f"flat@{s}"][-1][1] for s in study.seeds]))
    rows = {}
    for name, groups in plans.items():
        ne = float(np.mean([curves[f"{name}@{s}"][-1][1] for s in study.seeds]))
        rows[name] = {"kept_affinity": within_tower_affinity(groups, affinity), "ne": ne,
                      "rel_ne_vs_flat": (ne - flat_ne) / flat_ne, "towers": groups,
                      "per_seed_ne": [curves[f"{name}@{s}"][-1][1] for s in study.seeds]}
        print(f"{name:<8} kept affinity {rows[name]['kept_affinity']:.3f}  NE {ne:.4f}  "
              f"vs flat {100 * rows[name]['rel_ne_vs_flat']:+.2f}%", flush=True)
    result = {"config": q.config_of(study), "flat_ne": flat_ne, "plans": rows,
              "runtime_s": time.perf_counter() - start}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "quality_budget.json"), "w") as fh:
        json.dump(result, fh, indent=2, default=float)
    return result


if __name__ == "__main__":
    main()
