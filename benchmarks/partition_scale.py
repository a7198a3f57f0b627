"""How the learned Tower Partitioner scales with the number of features.

Model: a TorchRec DLRM with F one-table features (50 rows, dim 8) and G = 8 planted groups,
interleaved in model order (feature k is in group k % G, so the balanced placement, which
deals tables round-robin-like, does not find them by accident). The over-arch's first layer
reads only the dot products of within-group pairs (weight 1; every other dot and the dense
vector's dots weight 0) and a large bias keeps its ReLUs open: the output combines features
non-additively only inside the groups. Ids are drawn independently per feature, so
embedding similarity cannot see the groups; only the interaction affinity can.

Model "projection" (--model projection, for large F): TorchRec's DLRM_Projection with the
same planted groups (planted_projection): its interaction costs O(B F G D) instead of the
full DLRM's O(B F^2 D), which at 10,000 features is a 25.6 GB tensor at batch 64.

For each F: capture + analysis time, affinity time, plan time (local search), partition
time (= affinity + plan: what partitioner="learned" adds to transform), and the adjusted
Rand index of the towers (topology Gx1, one tower per group) against the planted groups.

    python benchmarks/partition_scale.py                      # F = 64, 256, 1000
    python benchmarks/partition_scale.py --features 64 --threads 1 --out results
    python benchmarks/partition_scale.py --features 10000 --model projection --threads 1

Wall times depend on what else runs on the machine; partition_cpu_s is the process's CPU
time for the same step (equal to the wall time on an idle machine with --threads 1).
Writes OUT/partition_scale.json. Targets: partition time <= 120 s at F = 1000, ARI >= 0.9 at
every F.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torchrec.models.dlrm import DLRM, DLRM_Projection  # noqa: E402
from torchrec.modules.embedding_configs import EmbeddingBagConfig  # noqa: E402
from torchrec.modules.embedding_modules import EmbeddingBagCollection  # noqa: E402
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor  # noqa: E402

from dmt_fx import Topology  # noqa: E402
from dmt_fx.bench.metrics import adjusted_rand_index  # noqa: E402
from dmt_fx.compiler.affinity import interaction_matrix, sampled_probes  # noqa: E402
from dmt_fx.compiler.analysis import analyze  # noqa: E402
from dmt_fx.compiler.capture import capture  # noqa: E402
from dmt_fx.compiler.partitioners.learned import learned_plan  # noqa: E402

GROUPS, DIM, ROWS, DENSE = 8, 8, 50, 4


def feature_names(num_features: int) -> list[str]:
    return [f"f{k:04d}" for k in range(num_features)]


def planted_groups(num_features: int, num_groups: int = GROUPS) -> list[list[str]]:
    names = feature_names(num_features)
    return [[n for k, n in enumerate(names) if k % num_groups == g] for g in range(num_groups)]


def planted_dlrm(num_features: int, num_groups: int = GROUPS, seed: int = 0) -> DLRM:
    """The DLRM whose over-arch reads only within-group dot products (see the module docstring)."""
    torch.manual_seed(seed)
    tables = [EmbeddingBagConfig(name=f"t_{n}", embedding_dim=DIM, num_embeddings=ROWS, feature_names=[n])
              for n in feature_names(num_features)]
    model = DLRM(embedding_bag_collection=EmbeddingBagCollection(tables=tables), dense_in_features=DENSE,
                 dense_arch_layer_sizes=[8, DIM], over_arch_layer_sizes=[8, 1])
    group = torch.arange(num_features) % num_groups
    rows, cols = torch.triu_indices(num_features + 1, num_features + 1, offset=1)  # vector 0: the dense arch
    keep = (rows > 0) & (group[(rows - 1).clamp(min=0)] == group[cols - 1])
    first = model.over_arch.model[0]._mlp[0]._linear
    with torch.no_grad():
        first.weight[:, DIM:] = keep.to(first.weight.dtype)
        first.bias.fill_(100.0)
        model.over_arch.model[1].weight.fill_(1.0)
    return model


def planted_projection(num_features: int, num_groups: int = GROUPS, seed: int = 0) -> DLRM_Projection:
    """TorchRec's DLRM_Projection with the same planted groups, for large F (module docstring).

    Its interaction projects the F embeddings to G vectors per branch and takes their G x G
    dot products: O(B F G D) per forward instead of the full DLRM's O(B F^2 D) (at 10,000
    features and batch 64 the full DLRM's B x F x F interaction alone is 25.6 GB). Planted:
    projection g of each branch sums the embeddings of group g (a large bias keeps the ReLUs
    open: the bias only adds main effects), and the over-arch reads only the G dot products
    (g, g). So e_i . e_j reaches the output exactly when i and j share a group."""
    torch.manual_seed(seed)
    tables = [EmbeddingBagConfig(name=f"t_{n}", embedding_dim=DIM, num_embeddings=ROWS, feature_names=[n])
              for n in feature_names(num_features)]
    width = num_groups * DIM
    model = DLRM_Projection(embedding_bag_collection=EmbeddingBagCollection(tables=tables), dense_in_features=DENSE,
                            dense_arch_layer_sizes=[8, DIM], over_arch_layer_sizes=[8, 1],
                            interaction_branch1_layer_sizes=[width], interaction_branch2_layer_sizes=[width])
    group = torch.arange(num_features) % num_groups
    dims = torch.arange(DIM)
    one = model.inter_arch.interaction_branch1.model._mlp[0]._linear  # out (g, d) = g * D + d: [B, G, D]
    two = model.inter_arch.interaction_branch2.model._mlp[0]._linear  # out (d, g) = d * G + g: [B, D, G]
    first = model.over_arch.model[0]._mlp[0]._linear  # in: dense (D), then the G x G dots, (g1, g2) = g1 * G + g2
    with torch.no_grad():
        for layer, row_of in ((one, lambda g, d: g * DIM + d), (two, lambda g, d: d * num_groups + g)):
            layer.weight.zero_()
            layer.bias.fill_(100.0)
            rows = row_of(group[:, None], dims[None, :])  # (F, D): the output each feature's column d feeds
            columns = (torch.arange(num_features)[:, None] + 1) * DIM + dims[None, :]  # after the dense vector
            layer.weight[rows.reshape(-1), columns.reshape(-1)] = 1.0
        first.weight.zero_()
        diagonal = torch.arange(num_groups) * (num_groups + 1)
        first.weight[:, DIM + diagonal] = 1.0
        first.bias.fill_(100.0)
        model.over_arch.model[1].weight.fill_(1.0)
    return model


MODELS = {"dlrm": planted_dlrm, "projection": planted_projection}


def planted_inputs(num_features: int, batch: int, seed: int = 0) -> tuple[torch.Tensor, KeyedJaggedTensor]:
    """Every feature's ids drawn on their own: 1-3 ids per bag."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 4, (num_features * batch,), generator=g)
    values = torch.randint(0, ROWS, (int(lengths.sum()),), generator=g)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=feature_names(num_features), values=values, lengths=lengths)
    return torch.rand(batch, DENSE, generator=g), kjt


def towers_ari(towers: list[list[str]], groups: list[list[str]]) -> float:
    tower = {f: t for t, fs in enumerate(towers) for f in fs}
    truth = {f: g for g, fs in enumerate(groups) for f in fs}
    names = sorted(truth)
    return adjusted_rand_index([truth[f] for f in names], [tower[f] for f in names])


def measure(num_features: int, batch: int, probes: int | None, seed: int = 0, split: bool = True,
            model_kind: str = "dlrm") -> dict:
    """One F: times (s) and the ARI of the learned plan's towers against the planted groups.

    `split` False (large F): learned_plan computes its own affinity (one timing, partition_s):
    the split route hands it a dict of F^2 pairs, 10^8 Python objects at F = 10,000."""
    model, inputs = MODELS[model_kind](num_features, seed=seed), planted_inputs(num_features, batch, seed)
    t0 = time.perf_counter()
    sites = analyze(*capture(model, inputs))
    t1, c1 = time.perf_counter(), time.process_time()
    affinity = None
    if split:
        names, matrix = interaction_matrix(model, sites, inputs, probes=probes, seed=seed)
        affinity = {(a, b): v for a, row in zip(names, matrix.tolist()) for b, v in zip(names, row) if a != b}
    t2, c2 = time.perf_counter(), time.process_time()
    t3, c3 = time.perf_counter(), time.process_time()
    plan = learned_plan(sites, Topology.parse(f"{GROUPS}x1"), {}, model=model, example_inputs=inputs, seed=seed,
                        affinity=affinity)
    t4, c4 = time.perf_counter(), time.process_time()
    towers = [list(t.features) for t in plan.towers]
    probes = sampled_probes(num_features, batch) if probes is None else probes
    return {"model": model_kind, "features": num_features, "batch": batch, "probes": probes, "towers": len(towers),
            "capture_s": round(t1 - t0, 2), "affinity_s": round(t2 - t1, 2) if split else None,
            "plan_s": round(t4 - t3, 2), "partition_s": round(t2 - t1 + t4 - t3, 2),
            "partition_cpu_s": round(c2 - c1 + c4 - c3, 2),  # CPU time: what a machine shared with others hides
            "rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),  # model included
            "ari": round(towers_ari(towers, planted_groups(num_features)), 4),
            "tower_sizes": sorted(len(t) for t in towers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, nargs="+", default=[64, 256, 1000])
    parser.add_argument("--batch", type=int, default=64, help="example batch (samples)")
    parser.add_argument("--probes", type=int, default=None,
                        help="sampled-affinity probes (default: the partitioner's own, max(32, 0.15 F / sqrt(batch)))")
    parser.add_argument("--model", choices=sorted(MODELS), default="dlrm",
                        help="dlrm: the full pairwise DLRM; projection: DLRM_Projection (for large F)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default; 1 is steadier on a loaded machine)")
    parser.add_argument("--out", default="results")
    parser.add_argument("--split-below", type=int, default=5000,
                        help="time affinity and plan apart only below this F (see measure)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for f in args.features:
        rows.append(measure(f, args.batch, args.probes, split=f < args.split_below, model_kind=args.model))
        print(json.dumps(rows[-1]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    targets = {"partition_s_at_1000_le_120": all(r["partition_s"] <= 120 for r in rows if r["features"] == 1000),
               "ari_ge_0.9": all(r["ari"] >= 0.9 for r in rows)}
    result = {"rows": rows, "targets": targets, "torch_threads": torch.get_num_threads()}
    with open(os.path.join(args.out, "partition_scale.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    print("| F | batch | probes | capture s | affinity s | plan s | partition s | partition CPU s | ARI |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['features']} | {r['batch']} | {r['probes']} | {r['capture_s']} | {r['affinity_s']} | "
              f"{r['plan_s']} | {r['partition_s']} | {r['partition_cpu_s']} | {r['ari']} |")
    print("targets:", targets)
    assert all(math.isfinite(r["ari"]) for r in rows)


if __name__ == "__main__":
    main()
