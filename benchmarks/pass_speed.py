"""Pass speed: wall time of dmt_fx.transform against the number of features.

Model: a torchrec EmbeddingBagCollection with one small table per feature (dim 8, every
fifth table shared by two features), a dense MLP and a concatenation interaction.
Reports the median of --repeats runs of `transform(model, topology)` (capture, analyses,
plan, passes; no example inputs, so no eager runs), plus a run with example_inputs
(adds one eager run for pooling statistics and one for verification).

  python benchmarks/pass_speed.py                  # 10..2000 features, writes results/pass_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn as nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

import dmt_fx


class WideModel(nn.Module):
    def __init__(self, num_features: int, dim: int = 8) -> None:
        super().__init__()
        tables, f = [], 0
        while f < num_features:
            names = [f"f{f}", f"f{f + 1}"] if f % 5 == 0 and f + 1 < num_features else [f"f{f}"]
            tables.append(EmbeddingBagConfig(name=f"t{len(tables)}", embedding_dim=dim,
                                             num_embeddings=100, feature_names=names))
            f += len(names)
        self.ebc = EmbeddingBagCollection(tables=tables)
        self.dense = nn.Linear(13, dim)
        self.over = nn.Linear(dim * (num_features + 1), 1)

    def forward(self, dense: torch.Tensor, kjt: KeyedJaggedTensor) -> torch.Tensor:
        kt = self.ebc(kjt)
        return self.over(torch.cat([self.dense(dense), kt.values()], dim=1))


def batch(num_features: int, batch_size: int = 4) -> tuple:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(0, 3, (num_features * batch_size,), generator=g)
    ids = torch.randint(0, 100, (int(lengths.sum()),), generator=g)
    kjt = KeyedJaggedTensor.from_lengths_sync([f"f{i}" for i in range(num_features)], ids, lengths)
    return torch.randn(batch_size, 13, generator=g), kjt


def time_transform(num_features: int, topology: str, repeats: int) -> dict:
    model = WideModel(num_features)
    inputs = batch(num_features)
    bare, with_inputs = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        dmt_fx.transform(model, topology)
        bare.append(time.perf_counter() - start)
        start = time.perf_counter()
        gm = dmt_fx.transform(model, topology, example_inputs=inputs)
        with_inputs.append(time.perf_counter() - start)
    passes = {r.name: round(r.seconds, 4) for r in dmt_fx.dmt_result(gm).passes}
    return {"num_features": num_features, "topology": topology, "repeats": repeats,
            "transform_median_s": round(statistics.median(bare), 4),
            "transform_with_example_inputs_median_s": round(statistics.median(with_inputs), 4),
            "pass_seconds": passes, "num_nodes": len(gm.graph.nodes)}


def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["num_features"] for r in records]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(xs, [r["transform_median_s"] for r in records], "o-", label="transform")
    ax.plot(xs, [r["transform_with_example_inputs_median_s"] for r in records], "s--",
            label="transform + example_inputs (2 eager runs)")
    ax.set_xlabel("features")
    ax.set_ylabel("seconds (median)")
    ax.set_title("dmt_fx pass speed (2 cores, CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, nargs="+", default=[10, 100, 500, 1000, 2000])
    parser.add_argument("--topology", default="2x4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    records = []
    for n in args.features:
        records.append(time_transform(n, args.topology, args.repeats))
        print(json.dumps(records[-1]))
    with open(os.path.join(args.out, "pass_speed.json"), "w") as handle:
        json.dump(records, handle, indent=2)
    plot(records, os.path.join(args.out, "pass_speed.png"))
    print(f"wrote {args.out}/pass_speed.json and {args.out}/pass_speed.png")


if __name__ == "__main__":
    main()
