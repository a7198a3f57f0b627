"""Model quality of sequence tower modules (seq_mean, seq_attention) on a synthetic sequence task.

Generator (seeded by --seed; nothing in it depends on the variants):
  * one item vocabulary of V = 1000 ids (Zipf popularity P(rank r) ~ 1 / r over a seeded
    order) and U = 500 user ids (uniform); every item id has a hidden latent
    z[id] ~ N(0, I_4), every user id u[id] ~ N(0, I_4);
  * per sample: a user, a candidate item, a history of L ~ U{0..MAX_LEN} items (empty
    histories happen) and 4 dense features ~ N(0, 1);
  * label logit = bias + a * (<z[cand], s> + <u[user], z[cand]>) / std + w . dense + eps:
    s is the history's rows weighted by softmax(<z[h_j], z[cand]>) (the history items
    like the candidate count more: a model that attends does better than a mean), a = 2,
    w . dense of std 0.3, eps ~ N(0, 0.3^2), bias -1; y ~ Bernoulli(sigmoid(logit)).
  * splits: train (steps x batch, one pass, the same order for every variant), held-out
    20k samples; the Bayes reference (the true logit) is reported as "oracle".

Model (the flat one): an EmbeddingBagCollection (user, item; dim 16), an
EmbeddingCollection (history over items, its own table; dim 16), the history reduced by a
masked mean in the model, [dense arch(dense), user, item, mean history, item * mean
history] -> MLP [64, 32, 1]. Adagrad lr 0.05 on every parameter, BCE-with-logits.

Variants (same batches, same steps; 3 initial-weight seeds s = --seed, --seed+1, ...: the
flat weights of seed s, torch.manual_seed(s + 1) before transform for the new modules):
  flat                        the original model;
  dmt-seqmean-c1              transform(copy, "2x2", tower_module="seq_mean", compression=1):
                              the model's own mean (exact: tracks flat, max |NE diff| reported);
  dmt-seqmean-c4              ... compression 4: 4 of 16 columns cross hosts per history,
                              a learned 4 -> 16 layer feeds the model's (B, 16) read;
  dmt-seqattn-c1 / -c4        seq_attention (learned query, starts as the mean).
The DMT models run in one process: the logical model computes what `distribute` computes
(tests/test_sequence_tower_module.py checks seq_mean c = 1 on a 2x2 gloo world).

  python benchmarks/quality_sequences.py      # writes benchmarks/recorded/quality_sequences.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dmt_fx  # noqa: E402
from dmt_fx.bench.metrics import auc, normalized_entropy  # noqa: E402

ITEMS, USERS, K, DIM, DENSE, MAX_LEN = 1000, 500, 4, 16, 4, 12
SIGNAL, NOISE_STD, DENSE_STD, BIAS = 2.0, 0.3, 0.3, -1.0
VARIANTS = {"dmt-seqmean-c1": ("seq_mean", 1), "dmt-seqmean-c4": ("seq_mean", 4),
            "dmt-seqattn-c1": ("seq_attention", 1), "dmt-seqattn-c4": ("seq_attention", 4)}


class Generator:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.z = self.rng.standard_normal((ITEMS, K))
        self.u = self.rng.standard_normal((USERS, K))
        order = self.rng.permutation(ITEMS)
        p = 1.0 / np.arange(1, ITEMS + 1)
        self.item_p = np.empty(ITEMS)
        self.item_p[order] = p / p.sum()
        self.w = self.rng.standard_normal(DENSE)
        self.w *= DENSE_STD / np.linalg.norm(self.w)
        self.std = 1.0
        self.std = float(np.std(self._signal(*self._features(20000))))

    def _features(self, n: int):
        users = self.rng.integers(0, USERS, n)
        cands = self.rng.choice(ITEMS, n, p=self.item_p)
        lengths = self.rng.integers(0, MAX_LEN + 1, n)
        history = self.rng.choice(ITEMS, int(lengths.sum()), p=self.item_p)
        return users, cands, lengths, history

    def _signal(self, users, cands, lengths, history) -> np.ndarray:
        seg = np.repeat(np.arange(len(lengths)), lengths)
        zc = self.z[cands]
        scores = np.einsum("ik,ik->i", self.z[history], zc[seg])
        weights = np.exp(scores - scores.max())
        norm = np.bincount(seg, weights, minlength=len(lengths))
        pooled = np.zeros((len(lengths), K))
        np.add.at(pooled, seg, self.z[history] * weights[:, None])
        pooled /= np.maximum(norm, 1e-12)[:, None]
        return np.einsum("ik,ik->i", pooled, zc) + np.einsum("ik,ik->i", self.u[users], zc)

    def sample(self, n: int) -> dict:
        users, cands, lengths, history = self._features(n)
        dense = self.rng.standard_normal((n, DENSE))
        logit = (BIAS + SIGNAL * self._signal(users, cands, lengths, history) / self.std + dense @ self.w
                 + NOISE_STD * self.rng.standard_normal(n))
        y = (self.rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        return {"users": users, "cands": cands, "lengths": lengths, "history": history, "dense": dense,
                "y": y, "logit": logit}


def batches(data: dict, size: int) -> list[tuple]:
    """(dense, pooled KJT, sequence KJT) batches of `size` samples, in order."""
    out, ends = [], np.concatenate([[0], np.cumsum(data["lengths"])])
    for start in range(0, len(data["y"]) - size + 1, size):
        stop = start + size
        pooled = KeyedJaggedTensor.from_lengths_sync(
            ["user", "item"], torch.from_numpy(np.concatenate([data["users"][start:stop], data["cands"][start:stop]])),
            torch.ones(2 * size, dtype=torch.int32))
        seq = KeyedJaggedTensor.from_lengths_sync(
            ["history"], torch.from_numpy(data["history"][ends[start]:ends[stop]]),
            torch.from_numpy(data["lengths"][start:stop]).int())
        out.append((torch.from_numpy(data["dense"][start:stop]).float(), pooled, seq,
                    torch.from_numpy(data["y"][start:stop]).unsqueeze(1)))
    return out


def masked_mean(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    mask = (torch.arange(values.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).to(values.dtype)
    return (values * mask.unsqueeze(2)).sum(1) / lengths.clamp(min=1).unsqueeze(1).to(values.dtype)


class SequenceRanker(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.pooled = EmbeddingBagCollection([EmbeddingBagConfig(name="t_user", embedding_dim=DIM, num_embeddings=USERS,
                                                                 feature_names=["user"]),
                                              EmbeddingBagConfig(name="t_item", embedding_dim=DIM, num_embeddings=ITEMS,
                                                                 feature_names=["item"])])
        self.sequences = EmbeddingCollection([EmbeddingConfig(name="s_history", embedding_dim=DIM,
                                                              num_embeddings=ITEMS, feature_names=["history"])])
        self.dense = nn.Sequential(nn.Linear(DENSE, DIM), nn.ReLU())
        self.over = nn.Sequential(nn.Linear(5 * DIM, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, dense: torch.Tensor, pooled: KeyedJaggedTensor, sequences: KeyedJaggedTensor) -> torch.Tensor:
        kt = self.pooled(pooled).to_dict()
        jts = self.sequences(sequences)
        history = masked_mean(jts["history"].to_padded_dense(MAX_LEN), jts["history"].lengths())
        return self.over(torch.cat([self.dense(dense), kt["user"], kt["item"], history, kt["item"] * history], dim=1))


@torch.no_grad()
def evaluate(model: nn.Module, held: list[tuple]) -> tuple[float, float]:
    logits = torch.cat([model(*b[:3]).reshape(-1) for b in held]).double().numpy()
    labels = torch.cat([b[3].reshape(-1) for b in held]).numpy()
    return normalized_entropy(labels, logits), auc(labels, logits)


def train(model: nn.Module, train_batches: list[tuple], held: list[tuple], lr: float, eval_every: int) -> list:
    optimizer = torch.optim.Adagrad(model.parameters(), lr=lr)
    loss_fn, curve = nn.BCEWithLogitsLoss(), []
    for step, (dense, pooled, seq, y) in enumerate(train_batches, start=1):
        optimizer.zero_grad()
        loss_fn(model(dense, pooled, seq), y).backward()
        optimizer.step()
        if step % eval_every == 0 or step == len(train_batches):
            curve.append((step, *evaluate(model, held)))
    return curve


def run_seed(seed: int, train_batches: list[tuple], held: list[tuple], args: argparse.Namespace) -> dict:
    flat = SequenceRanker(seed)
    models = {"flat": flat}
    for name, (kind, c) in VARIANTS.items():
        if name not in args.variants:
            continue
        torch.manual_seed(seed + 1)
        copy_ = copy.deepcopy(flat)
        models[name] = dmt_fx.transform(copy_, "2x2", example_inputs=train_batches[0][:3], tower_module=kind,
                                        compression=c)
    curves = {}
    for name, model in models.items():
        start = time.time()
        curves[name] = train(model, train_batches, held, args.lr, args.eval_every)
        print(f"seed {seed} {name:16s} NE {curves[name][-1][1]:.4f} AUC {curves[name][-1][2]:.4f} "
              f"({time.time() - start:.0f} s)", flush=True)
    return curves


def summarize(per_seed: dict[int, dict], oracle: tuple[float, float]) -> dict:
    names = list(next(iter(per_seed.values())))
    variants = {}
    for name in names:
        ne = [per_seed[s][name][-1][1] for s in per_seed]
        au = [per_seed[s][name][-1][2] for s in per_seed]
        rel = [per_seed[s][name][-1][1] / per_seed[s]["flat"][-1][1] - 1 for s in per_seed]
        variants[name] = {"ne_mean": float(np.mean(ne)), "ne_std": float(np.std(ne)), "ne": ne,
                          "auc_mean": float(np.mean(au)), "auc": au, "ne_vs_flat_mean": float(np.mean(rel)),
                          "ne_vs_flat": rel}
    if "dmt-seqmean-c1" in names:  # exact: the largest NE difference to flat over every evaluated step
        variants["dmt-seqmean-c1"]["max_abs_ne_diff_vs_flat"] = max(
            abs(a[1] - b[1]) for s in per_seed for a, b in zip(per_seed[s]["dmt-seqmean-c1"], per_seed[s]["flat"]))
    return {"oracle": {"ne": oracle[0], "auc": oracle[1]}, "variants": variants,
            "curves": {str(s): c for s, c in per_seed.items()}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--heldout", type=int, default=20000)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated DMT variants (flat always)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "recorded",
                                                 "quality_sequences.json"))
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    gen = Generator(args.seed)
    train_batches = batches(gen.sample(args.steps * args.batch_size), args.batch_size)
    held_data = gen.sample(args.heldout)
    held = batches(held_data, 1000)
    n = len(held) * 1000
    oracle = (normalized_entropy(held_data["y"][:n], held_data["logit"][:n]), auc(held_data["y"][:n], held_data["logit"][:n]))
    start = time.time()
    per_seed = {s: run_seed(s, train_batches, held, args) for s in range(args.seed, args.seed + args.seeds)}
    result = summarize(per_seed, oracle)
    result["config"] = {k: v for k, v in vars(args).items() if k != "out"} | {
        "items": ITEMS, "users": USERS, "dim": DIM, "max_len": MAX_LEN, "topology": "2x2", "seconds": time.time() - start}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    print_table(result)
    return result


def print_table(result: dict) -> None:
    print(f"| variant | NE (mean ± std, {len(result['curves'])} seeds) | NE vs flat | AUC |")
    print("|---|---:|---:|---:|")
    for name, v in result["variants"].items():
        print(f"| {name} | {v['ne_mean']:.4f} ± {v['ne_std']:.4f} | {100 * v['ne_vs_flat_mean']:+.2f}% | "
              f"{v['auc_mean']:.4f} |")
    print(f"| oracle | {result['oracle']['ne']:.4f} | | {result['oracle']['auc']:.4f} |")


if __name__ == "__main__":
    main()
