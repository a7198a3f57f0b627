"""Model quality of DMT variants on synthetic CTR data with planted feature-interaction groups.

Generator (seeded by --seed; nothing in it depends on the partitioners or the targets):
  * F = 16 sparse features f00..f15 in G = 4 planted groups of 4. Group membership is a
    seeded random permutation of the features, so groups are not contiguous in model order.
  * Feature i has a vocabulary of V_i ids, V_i drawn log-uniformly in [200, 2000]. Each
    sample has exactly one id per feature (one id per bag), drawn independently of every
    other feature with Zipf's law P(id of popularity rank r) ~ 1 / r (r = 1..V_i) over a
    seeded random ordering of the ids.
  * Every id of every feature has a hidden latent vector z_i[id] ~ N(0, I_k), k = 4.
  * 13 dense features ~ N(0, 1).
  * Label logit:
        s(x)  = sum_g sum_{i<j in g} <z_i[x_i], z_j[x_j]>        (within-group pairs only:
                                                                    cross-group pairs do not interact)
        logit = bias + a * s(x) / std(s) + w . dense + eps,       eps ~ N(0, 0.3^2)
    with a = 2.0 (interaction signal), w ~ N(0, I) scaled so that w . dense has std 0.3,
    bias = -1.0 (base rate about 0.3), std(s) estimated on 20k generator samples.
    y ~ Bernoulli(sigmoid(logit)).
  * Splits (independent draws from the same generator): train (by default steps x
    batch size = 6000 x 256 = 1.5M samples, streamed in batches of 256: ONE pass, the same
    order for every variant; a smaller --train-size is reshuffled every epoch), held-out
    (20k, for every metric) and a separate 4096-sample "calibration" batch given to the
    learned partitioner as example_inputs. One pass because CTR models overfit from the
    second epoch on ("one-epoch phenomenon"): with 100k samples x 5 epochs, flat's held-out
    NE rose from 0.99 to 3.9 for every lr tried. The Bayes reference (NE and AUC of the true
    logit on the held-out set) is reported as "oracle".

  Tuning, done once on flat only (seed 0, before any DMT variant was run): one pass,
  Adagrad lr in {0.02, 0.05, 0.1} -> 0.05 (held-out NE 0.79 at 2000 steps, oracle 0.66).
  Changed after DMT variants were run, and why: the default length went from 2000 to 6000
  steps (more data, still one pass), because at 2000 steps every variant was still
  improving steeply (flat: -0.011 NE over the last 200 steps) and the comparison measured
  learning speed more than the models; and every variant is now trained from 3
  initial-weight seeds, because two DMT-TM models with the SAME towers (learned and
  planted, differing only in tower order, hence in their new modules' random init)
  differed by up to 2.2% NE in single-seed runs (1.1% vs 1.7% as a 3-seed mean); plans
  are now put in one canonical tower order, so equal towers build equal models. The NE
  at a third of the steps (2000 by default) is still reported next to the final one.

Model: torchrec DLRM over an EmbeddingBagCollection with one table per feature (dim 16),
dense arch [64, 16], over arch [64, 32, 1], dot interaction. Trained with Adagrad
(lr 0.05, every parameter), BCE-with-logits loss.

Variants (same batches and number of steps; each trained from --seeds initial-weight
seeds s = --seed, --seed+1, ...: the flat weights of seed s, and torch.manual_seed(s + 1)
for the new tower modules and rebuilt layers, the same for every plan; every plan is put in
one canonical tower order first, so two plans with the same towers give the same model):
  flat            the original model;
  dmt-identity    transform(copy, "4x1"), first seed only: must track flat exactly
                  (max |NE diff| reported);
  dmt-tm-learned  towers from transform(trained flat of the first seed, "4x1", partitioner="learned",
                  example_inputs=calibration batch), then transform(fresh copy, "4x1",
                  plan=those towers, tower_module=--tower-module, compression=--compression);
  dmt-tm-random   the same with partitioner="random" (seed --partition-seed);
  dmt-tm-planted  the same with the planted groups as the plan (an oracle: the best a
                  partitioner could do; tells whether the TM itself costs quality).

--towers-per-domain k: every partitioner makes 4 x k towers (k per host) and
the planted plan cuts each group into k towers in model order. Recorded (1 seed, 1,000 steps,
dot c = 2; benchmarks/recorded/towers_per_domain/): NE vs flat, learned +0.92% at k = 1 and
+4.17% at k = 2 (planted halves +6.18%, random +9.7% both): k > 1 splits interacting features.

Metrics on held-out data: NE = mean log loss / entropy of the held-out base rate; AUC by
ranks (Mann-Whitney U, ties averaged); both every --eval-every steps (learning curves) and
at the end, as the mean (and std) over the seeds, with each seed's values; NE relative to
flat (mean over the same seeds), at the end and at every evaluated step; adjusted Rand index of each plan's towers against the
planted groups (from the contingency table); the cross-host width reduction of the towers
(sum of tower-module input widths / sum of output widths); and, as a diagnostic, the
partitioner's own affinity (dmt_fx.compiler.affinity.interaction_affinity, computed on the trained
flat model and the calibration batch), and the embedding CKA it replaced, averaged over
within-group and cross-group feature pairs; the ARI the
learned partitioner reaches when handed the planted groups as its affinity (1 inside a
group, 0 across: isolates its balance limits from its affinity measure); each plan's
lookup and memory imbalance.

Targets (reported, met or not; the generator is not tuned to them):
  learned-tower DMT-TM within 0.5% relative NE of flat; learned towers lower NE than random
  ones; ARI >= 0.9 for learned towers.

  python benchmarks/quality.py                  # writes results/quality.json, results/quality_curves.png (10-14 min here)
  python benchmarks/quality.py --quick          # tiny sizes (smoke test)

--task sequences runs the sequence task instead (benchmarks/quality_sequences.py: a user,
a candidate and a jagged history read by an EmbeddingCollection; NE of the sequence tower
modules seq_mean / seq_attention at c = 1 and 4 against flat, 3 seeds); every other
argument goes to that benchmark:
  python benchmarks/quality.py --task sequences  # benchmarks/recorded/quality_sequences.json (25 min here)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.models.dlrm import DLRM

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import dmt_fx  # noqa: E402
from dmt_fx.bench.metrics import adjusted_rand_index, auc, normalized_entropy  # noqa: E402
from dmt_fx.compiler.affinity import feature_affinity, feature_embeddings, interaction_affinity  # noqa: E402
from dmt_fx.compiler.partitioners.learned import DEFAULT_BALANCE_SLACK, learned_plan  # noqa: E402
from dmt_fx.compiler.tower_modules import TOWER_MODULES, CompressingTowerModule  # noqa: E402

NUM_FEATURES, NUM_GROUPS, LATENT_DIM, DENSE, DIM = 16, 4, 4, 13, 16
VOCAB_RANGE = (200, 2000)
ZIPF_ALPHA = 1.0
SIGNAL, DENSE_STD, NOISE_STD, BIAS = 2.0, 0.3, 0.3, -1.0
TOPOLOGY = "4x1"
TARGET_REL_NE, TARGET_ARI = 0.005, 0.9
VARIANTS = ("flat", "dmt-identity", "dmt-tm-learned", "dmt-tm-random", "dmt-tm-planted")


# ---------------------------------------------------------------- generator


class Generator:
    """The planted-groups CTR generator described in the module docstring."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.names = [f"f{i:02d}" for i in range(NUM_FEATURES)]
        perm = rng.permutation(NUM_FEATURES)
        size = NUM_FEATURES // NUM_GROUPS
        self.groups = [sorted(int(i) for i in perm[g * size:(g + 1) * size]) for g in range(NUM_GROUPS)]
        lo, hi = np.log(VOCAB_RANGE[0]), np.log(VOCAB_RANGE[1])
        self.vocab = [int(round(math.exp(v))) for v in rng.uniform(lo, hi, NUM_FEATURES)]
        self.probs, self.order = [], []
        for v in self.vocab:
            p = 1.0 / np.arange(1, v + 1) ** ZIPF_ALPHA
            self.probs.append(p / p.sum())
            self.order.append(rng.permutation(v))  # popular ids are not the small ones
        self.latent = [rng.standard_normal((v, LATENT_DIM)) for v in self.vocab]
        w = rng.standard_normal(DENSE)
        self.w = w / np.linalg.norm(w) * DENSE_STD  # dense ~ N(0, I): w . dense has std DENSE_STD
        self.rng = rng
        ids, _ = self._features(20_000, np.random.default_rng(seed + 1))
        self.s_std = float(self._interaction(ids).std())

    def _features(self, n: int, rng: np.random.Generator):
        ids = np.stack([self.order[i][rng.choice(self.vocab[i], size=n, p=self.probs[i])]
                        for i in range(NUM_FEATURES)], axis=1)
        return ids, rng.standard_normal((n, DENSE))

    def _interaction(self, ids: np.ndarray) -> np.ndarray:
        s = np.zeros(ids.shape[0])
        for group in self.groups:
            for a in range(len(group)):
                for b in range(a + 1, len(group)):
                    i, j = group[a], group[b]
                    s += (self.latent[i][ids[:, i]] * self.latent[j][ids[:, j]]).sum(axis=1)
        return s

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        ids, dense = self._features(n, self.rng)
        logit = (BIAS + SIGNAL * self._interaction(ids) / self.s_std + dense @ self.w
                 + NOISE_STD * self.rng.standard_normal(n))
        y = (self.rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        return {"ids": torch.from_numpy(ids).long(), "dense": torch.from_numpy(dense).float(),
                "y": torch.from_numpy(y).unsqueeze(1), "logit": torch.from_numpy(logit)}


def make_batch(data: dict[str, torch.Tensor], names: list[str], index=None) -> tuple:
    ids = data["ids"] if index is None else data["ids"][index]
    dense = data["dense"] if index is None else data["dense"][index]
    values = ids.t().contiguous().view(-1)  # feature-major, one id per bag
    kjt = KeyedJaggedTensor.from_lengths_sync(names, values, torch.ones(values.numel(), dtype=torch.int32))
    return dense, kjt


# ---------------------------------------------------------------- model and metrics


def make_model(gen: Generator, seed: int) -> DLRM:
    torch.manual_seed(seed)
    tables = [EmbeddingBagConfig(name=f"t_{n}", embedding_dim=DIM, num_embeddings=v, feature_names=[n])
              for n, v in zip(gen.names, gen.vocab)]
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("cpu"))
    return DLRM(embedding_bag_collection=ebc, dense_in_features=DENSE,
                dense_arch_layer_sizes=[64, DIM], over_arch_layer_sizes=[64, 32, 1])


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[tuple], labels: np.ndarray) -> tuple[float, float]:
    flags = [(m, m.training) for m in model.modules()]
    for m, _ in flags:
        m.training = False
    try:
        logits = torch.cat([model(*b).reshape(-1) for b in batches]).double().numpy()
    finally:
        for m, t in flags:
            m.training = t
    return normalized_entropy(labels, logits), auc(labels, logits)


def labels_of(groups: list[list[str]], names: list[str]) -> list[int]:
    of = {f: g for g, fs in enumerate(groups) for f in fs}
    return [of[n] for n in names]


def canonical(plan, names: list[str]) -> dict:
    """The plan with features in model order inside each tower and towers ordered by their
    first feature (host = position). A plan's tower order is arbitrary, but it decides which
    random init each tower's new module gets; in this order two plans with the same towers
    build the same model, so their NE differs only where their towers do."""
    towers = plan["towers"] if isinstance(plan, dict) else [{"features": list(t.features)} for t in plan.towers]
    groups = sorted((sorted(t["features"], key=names.index) for t in towers), key=lambda g: names.index(g[0]))
    per_host = -(-len(groups) // int(TOPOLOGY.split("x")[0]))  # k towers per host (host placement: no numerics)
    return {"towers": [{"host": h // per_host, "features": g} for h, g in enumerate(groups)], "topology": TOPOLOGY}


def planted_towers(planted: list[list[str]], k: int, names: list[str]) -> list[list[str]]:
    """The planted groups, each cut into k towers (model order): the oracle plan with k towers per host."""
    out = []
    for group in planted:
        ordered = sorted(group, key=names.index)
        size = -(-len(ordered) // k)
        out += [ordered[i:i + size] for i in range(0, len(ordered), size)]
    return out


def width_reduction(gm: nn.Module) -> dict:
    specs = [m.spec for m in gm.modules() if isinstance(m, CompressingTowerModule)]
    win, wout = sum(s.in_width for s in specs), sum(s.out_width for s in specs)
    return {"in_width": win, "out_width": wout, "reduction": win / wout if wout else None}


# ---------------------------------------------------------------- training


def train_all(models: dict[str, nn.Module], train: dict, names: list[str], heldout_batches, heldout_y,
              args, log_every: float = 20.0) -> dict[str, list]:
    """Train every model on the same batch sequence, in lock step; learning curves."""
    opts = {k: torch.optim.Adagrad(m.parameters(), lr=args.lr) for k, m in models.items()}
    loss_fn = nn.BCEWithLogitsLoss()
    curves = {k: [] for k in models}
    n = train["y"].shape[0]
    g = torch.Generator().manual_seed(args.seed + 7)
    perm, pos, last = torch.randperm(n, generator=g), 0, time.perf_counter()

    def record(step):
        for k, m in models.items():
            ne, a = evaluate(m, heldout_batches, heldout_y)
            curves[k].append([step, ne, a])

    record(0)
    for step in range(1, args.steps + 1):
        if pos + args.batch_size > n:
            perm, pos = torch.randperm(n, generator=g), 0
        index = perm[pos:pos + args.batch_size]
        pos += args.batch_size
        batch = make_batch(train, names, index)
        y = train["y"][index]
        for k, m in models.items():
            opts[k].zero_grad(set_to_none=True)
            loss_fn(m(*batch), y).backward()
            opts[k].step()
        if step % args.eval_every == 0 or step == args.steps:
            record(step)
            if time.perf_counter() - last > log_every:
                last = time.perf_counter()
                print(f"  step {step}: " + ", ".join(f"{k} NE {c[-1][1]:.4f}" for k, c in curves.items()),
                      flush=True)
    return curves


def summarize(curves: dict[str, list]) -> dict[str, dict]:
    """Per variant (keys "name@seed"): final NE / AUC as mean and std over its seeds, each
    seed's values, the mean learning curve, and the mean NE at each evaluated step."""
    out: dict[str, dict] = {}
    for name in dict.fromkeys(k.split("@")[0] for k in curves):
        runs = {int(k.split("@")[1]): np.array(c) for k, c in curves.items() if k.split("@")[0] == name}
        final_ne = [float(c[-1][1]) for c in runs.values()]
        final_auc = [float(c[-1][2]) for c in runs.values()]
        mean_curve = np.mean(np.stack(list(runs.values())), axis=0)
        out[name] = {"ne": float(np.mean(final_ne)), "ne_std": float(np.std(final_ne)),
                     "auc": float(np.mean(final_auc)), "auc_std": float(np.std(final_auc)),
                     "per_seed": [{"seed": s, "ne": float(c[-1][1]), "auc": float(c[-1][2])}
                                  for s, c in runs.items()],
                     "curve": mean_curve.tolist(),
                     "ne_at_step": {int(p[0]): float(p[1]) for p in mean_curve}}
    return out


# ---------------------------------------------------------------- main


TASKS = ("planted", "sequences")  # the planted-interaction CTR task (this file); the sequence task


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=TASKS, default="planted",
                   help="planted (default): this benchmark; sequences: benchmarks/quality_sequences.py, "
                        "which takes the other arguments")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 6000; quick 60)")
    p.add_argument("--seeds", type=int, default=None,
                   help="initial-weight seeds per variant, --seed, --seed+1, ... (default 3; quick 1)")
    p.add_argument("--batch-size", type=int, default=None, help="default 256; quick 128")
    p.add_argument("--train-size", type=int, default=None, help="default steps x batch size (one pass)")
    p.add_argument("--heldout-size", type=int, default=None, help="default 20000; quick 2000")
    p.add_argument("--calib-size", type=int, default=None, help="learned partitioner batch: default 4096; quick 512")
    p.add_argument("--eval-every", type=int, default=None, help="default 250; quick 20")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--compression", type=int, default=2)
    p.add_argument("--tower-module", default="dot",  # the compressing kinds: DMT-TM needs one that changes the model
                   choices=[name for name, kind in TOWER_MODULES.items() if kind.changes_model and not kind.sequences])
    p.add_argument("--seed", type=int, default=0, help="generator, initial weights and batch order")
    p.add_argument("--partition-seed", type=int, default=None, help="seed of the random/learned partitioner "
                                                                     "(default --seed)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results")
    p.add_argument("--quick", action="store_true", help="tiny sizes for the smoke test")
    p.add_argument("--towers-per-domain", type=int, default=1,
                   help="k towers per host (transform towers_per_domain): 4 x k towers; planted: each group "
                        "cut into k towers in model order")
    args = p.parse_args(argv)
    defaults = ({"steps": 60, "batch_size": 128, "heldout_size": 2000, "calib_size": 512, "eval_every": 20,
                 "seeds": 1}
                if args.quick else
                {"steps": 6000, "batch_size": 256, "heldout_size": 20_000, "calib_size": 4096, "eval_every": 250,
                 "seeds": 3})
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.train_size is None:
        args.train_size = args.steps * args.batch_size
    if args.partition_seed is None:
        args.partition_seed = args.seed
    return args


@dataclasses.dataclass
class Study:
    """What every step shares: the options, the generator and its splits, the initial weights."""

    args: argparse.Namespace
    gen: Generator
    train: dict[str, torch.Tensor]
    heldout: dict[str, torch.Tensor]
    heldout_batches: list[tuple]
    calib_batch: tuple  # the learned partitioner's example inputs
    example: tuple  # example inputs of every other transform
    init_states: dict[int, dict[str, torch.Tensor]]  # initial weights per seed

    @property
    def names(self) -> list[str]:
        return self.gen.names

    @property
    def planted(self) -> list[list[str]]:
        return [[self.names[i] for i in g] for g in self.gen.groups]

    @property
    def seeds(self) -> list[int]:
        return list(self.init_states)

    @property
    def heldout_y(self) -> np.ndarray:
        return self.heldout["y"].reshape(-1).double().numpy()

    def fresh(self, seed: int | None = None) -> DLRM:
        """A flat model with the initial weights of `seed` (default: the first seed)."""
        seed = self.args.seed if seed is None else seed
        model = make_model(self.gen, seed)
        model.load_state_dict(self.init_states[seed])
        return model

    def train_models(self, models: dict[str, nn.Module]) -> dict[str, list]:
        return train_all(models, self.train, self.names, self.heldout_batches, self.heldout_y, self.args)


def prepare(args: argparse.Namespace) -> Study:
    """Step 1: the generator, the train / held-out / calibration splits, the initial weights."""
    gen = Generator(args.seed)
    train, heldout, calib = gen.sample(args.train_size), gen.sample(args.heldout_size), gen.sample(args.calib_size)
    heldout_batches = [make_batch(heldout, gen.names, torch.arange(s, min(s + 4096, args.heldout_size)))
                       for s in range(0, args.heldout_size, 4096)]
    seeds = [args.seed + k for k in range(args.seeds)]
    study = Study(args, gen, train, heldout, heldout_batches, make_batch(calib, gen.names),
                  make_batch(train, gen.names, torch.arange(min(256, args.train_size))),
                  {s: copy.deepcopy(make_model(gen, s).state_dict()) for s in seeds})
    print(f"generator: {NUM_FEATURES} features in {NUM_GROUPS} planted groups {study.planted}; train base rate "
          f"{float(train['y'].mean()):.3f}, held-out {float(heldout['y'].mean()):.3f}", flush=True)
    return study


def train_flat(study: Study, timings: dict[str, float]) -> tuple[dict[str, list], DLRM]:
    """Step 2: flat for every initial-weight seed and dmt-identity for the first, in lock step.
    The first seed's trained flat model gives the learned partitioner its model."""
    t0 = time.perf_counter()
    print(f"stage 1: training flat x {len(study.seeds)} seeds and dmt-identity for {study.args.steps} steps",
          flush=True)
    models = {f"flat@{s}": study.fresh(s) for s in study.seeds}
    models[f"dmt-identity@{study.args.seed}"] = dmt_fx.transform(study.fresh(), TOPOLOGY, example_inputs=study.example,
                                                                 towers_per_domain=study.args.towers_per_domain)
    curves = study.train_models(models)
    timings["stage1_flat_identity"] = time.perf_counter() - t0
    return curves, models[f"flat@{study.args.seed}"]


def make_plans(study: Study, flat: DLRM, timings: dict[str, float]) -> tuple[dict[str, Any], Any]:
    """Step 3: the learned towers (from the trained flat model), random, planted, balanced, and
    the learned partitioner handed the planted groups as its affinity; and the model's sites."""
    args, names = study.args, study.names
    t0 = time.perf_counter()
    k = args.towers_per_domain
    learned_gm = dmt_fx.transform(copy.deepcopy(flat), TOPOLOGY, partitioner="learned",
                                  example_inputs=study.calib_batch, seed=args.partition_seed, towers_per_domain=k)
    timings["learned_partitioner"] = time.perf_counter() - t0
    sites = dmt_fx.dmt_result(learned_gm).sites
    # A perfect signal: affinity 1 inside planted groups, 0 across (isolates the partitioner's
    # balance limits from its affinity measure).
    oracle_aff = {(a, b): float(any(a in g and b in g for g in study.planted)) for a in names for b in names if a != b}
    plans = {
        "learned": dmt_fx.tower_plan(learned_gm),
        "random": dmt_fx.tower_plan(dmt_fx.transform(study.fresh(), TOPOLOGY, partitioner="random",
                                                     example_inputs=study.example, seed=args.partition_seed,
                                                     towers_per_domain=k)),
        "planted": canonical({"towers": [{"features": g} for g in planted_towers(study.planted, k, names)]}, names),
        "balanced": dmt_fx.tower_plan(dmt_fx.transform(study.fresh(), TOPOLOGY, example_inputs=study.example,
                                                       towers_per_domain=k)),
        "learned_given_planted_affinity": learned_plan(
            sites, dmt_fx.Topology.parse(TOPOLOGY), {n: 1.0 for n in names}, model=None, example_inputs=None,
            seed=args.partition_seed, affinity=oracle_aff, towers_per_domain=k),
    }
    return plans, sites


def affinity_diagnostic(study: Study, flat: DLRM, sites: Any) -> dict[str, dict[str, float]]:
    """Step 4 (diagnostic): the partitioner's affinity by planted-pair type, next to the
    embedding-similarity measure (CKA) it replaced, which cannot see these groups: the
    generator draws every feature independently, so embeddings do not co-vary."""
    label = dict(zip(study.names, labels_of(study.planted, study.names)))

    def by_pair_type(aff: dict[tuple[str, str], float]) -> dict[str, float]:
        within = [v for (a, b), v in aff.items() if a < b and label[a] == label[b]]
        cross = [v for (a, b), v in aff.items() if a < b and label[a] != label[b]]
        return {"within_group_mean": float(np.mean(within)), "cross_group_mean": float(np.mean(cross)),
                "within_group_min": float(np.min(within)), "within_group_max": float(np.max(within)),
                "cross_group_max": float(np.max(cross))}

    return {"interaction (the learned partitioner's)": by_pair_type(
                interaction_affinity(flat, sites, study.calib_batch)),
            "embedding CKA (co-variation; not used)": by_pair_type(
                feature_affinity(feature_embeddings(flat, sites, study.calib_batch)))}


def train_tower_modules(study: Study, plans: dict[str, Any],
                        timings: dict[str, float]) -> tuple[dict[str, list], dict[str, dict], dict[str, Any]]:
    """Step 5: the compressing variants for every initial-weight seed (each starts from that
    seed's flat weights), on the same batches; their curves, width reductions and plans."""
    models, widths = {}, {}
    for seed in study.seeds:
        for kind in ("learned", "random", "planted"):
            torch.manual_seed(seed + 1)  # the new modules' init, the same for every plan
            gm = dmt_fx.transform(study.fresh(seed), TOPOLOGY, plan=canonical(plans[kind], study.names),
                                  tower_module=study.args.tower_module, compression=study.args.compression,
                                  example_inputs=study.example)
            models[f"dmt-tm-{kind}@{seed}"] = gm
            widths[kind] = width_reduction(gm)
    t0 = time.perf_counter()
    print(f"stage 2: training {len(models)} models for {study.args.steps} steps", flush=True)
    curves = study.train_models(models)
    timings["stage2_tm"] = time.perf_counter() - t0
    return curves, widths, {"planted": dmt_fx.tower_plan(models[f"dmt-tm-planted@{study.args.seed}"])}


def compare_with_flat(curves: dict[str, list], seed: int) -> dict[str, dict]:
    """Step 6: per variant, mean metrics over its seeds and NE relative to flat over the same seeds."""
    variants = summarize(curves)
    for v in variants.values():  # against flat over the same seeds (identity has one)
        seeds = [r["seed"] for r in v["per_seed"]]
        flat_curve = np.mean([np.array(curves[f"flat@{s}"]) for s in seeds], axis=0)
        v["rel_ne_vs_flat"] = (v["ne"] - flat_curve[-1][1]) / flat_curve[-1][1]
        v["rel_ne_vs_flat_at_step"] = {int(p[0]): (v["ne_at_step"][int(p[0])] - p[1]) / p[1] for p in flat_curve}
    variants["dmt-identity"]["max_abs_ne_diff_vs_flat"] = max(
        abs(a[1] - b[1]) for a, b in zip(curves[f"flat@{seed}"], curves[f"dmt-identity@{seed}"]))
    return variants


def partition_quality(study: Study, plans: dict[str, Any]) -> tuple[dict[str, float], dict[str, list]]:
    """Step 7: adjusted Rand index of the learned, random and oracle-affinity towers against the planted groups."""
    kinds = ("learned", "random", "learned_given_planted_affinity")
    towers = {k: [list(t.features) for t in plans[k].towers] for k in kinds}
    truth = labels_of(study.planted, study.names)
    ari = {k: adjusted_rand_index(truth, labels_of(towers[k], study.names)) for k in kinds}
    return ari, towers


def targets(variants: dict[str, dict], ari: dict[str, float]) -> dict[str, dict]:
    """Step 8: the benchmark's targets, met or not."""
    learned, random = variants["dmt-tm-learned"], variants["dmt-tm-random"]
    identity_diff = variants["dmt-identity"]["max_abs_ne_diff_vs_flat"]
    return {
        "learned_rel_ne_vs_flat": {"value": learned["rel_ne_vs_flat"], "target": f"<= {TARGET_REL_NE}",
                                   "met": bool(learned["rel_ne_vs_flat"] <= TARGET_REL_NE)},
        "learned_ne_below_random": {"value": learned["ne"] - random["ne"], "target": "< 0 (NE learned - NE random)",
                                    "met": bool(learned["ne"] < random["ne"])},
        "learned_ari": {"value": ari["learned"], "target": f">= {TARGET_ARI}", "met": bool(ari["learned"] >= TARGET_ARI)},
        "identity_tracks_flat": {"value": identity_diff, "target": "<= 1e-4 max |NE diff|",
                                 "met": bool(identity_diff <= 1e-4)},
    }


def config_of(study: Study) -> dict[str, Any]:
    """The options and the generator's constants, as recorded in the JSON."""
    return {**vars(study.args), "topology": TOPOLOGY, "num_features": NUM_FEATURES, "num_groups": NUM_GROUPS,
            "latent_dim": LATENT_DIM, "embedding_dim": DIM, "vocab": dict(zip(study.names, study.gen.vocab)),
            "zipf_alpha": ZIPF_ALPHA, "signal": SIGNAL, "dense_std": DENSE_STD, "noise_std": NOISE_STD, "bias": BIAS,
            "train_base_rate": float(study.train["y"].mean()), "heldout_base_rate": float(study.heldout["y"].mean()),
            "optimizer": "Adagrad", "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}


def balance_of(plans: dict[str, Any]) -> dict[str, Any]:
    """Each plan's imbalances, and the limits the learned partitioner keeps."""
    order = ("learned", "random", "balanced", "planted", "learned_given_planted_affinity")
    balanced = plans["balanced"]
    return {
        "plan_balance": {k: {"lookup_imbalance": plans[k].lookup_imbalance,
                             "memory_imbalance": plans[k].memory_imbalance,
                             "balance_bound": plans[k].balance_bound} for k in order},
        "learned_partitioner_limits": {
            "note": "the learned partitioner keeps each imbalance <= the balanced plan's + DEFAULT_BALANCE_SLACK",
            "lookup": balanced.lookup_imbalance + DEFAULT_BALANCE_SLACK,
            "memory": balanced.memory_imbalance + DEFAULT_BALANCE_SLACK},
    }


def main(argv=None) -> dict:
    task = argparse.ArgumentParser(add_help=False)
    task.add_argument("--task", choices=TASKS, default="planted")
    chosen, rest = task.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if chosen.task == "sequences":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import quality_sequences
        return quality_sequences.main(rest)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("dmt_fx").setLevel(logging.ERROR)  # the "changes the model" warning is expected
    start, timings = time.perf_counter(), {}
    study = prepare(args)
    curves, flat = train_flat(study, timings)
    plans, sites = make_plans(study, flat, timings)
    affinity = affinity_diagnostic(study, flat, sites)
    tm_curves, widths, trained_plans = train_tower_modules(study, plans, timings)
    variants = compare_with_flat({**curves, **tm_curves}, args.seed)
    ari, towers = partition_quality(study, plans)
    heldout_logit = study.heldout["logit"].numpy()
    result = {
        "config": config_of(study), "variants": variants, "ari": ari, "towers": towers,
        "planted_groups": study.planted, "targets": targets(variants, ari), "width_reduction": widths,
        **balance_of({**plans, **trained_plans}), "affinity_diagnostic": affinity,
        "oracle": {"ne": normalized_entropy(study.heldout_y, heldout_logit), "auc": auc(study.heldout_y, heldout_logit),
                   "note": "NE/AUC of the generator's true logit on the held-out set (Bayes reference)"},
        "runtime_s": {"total": time.perf_counter() - start, **timings},
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "quality.json"), "w") as fh:
        json.dump(result, fh, indent=2, default=float)
    plot(result, os.path.join(args.out, "quality_curves.png"))
    print_table(result)
    return result


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for k, v in result["variants"].items():
        c = np.array(v["curve"])
        style = "--" if k == "dmt-identity" else "-"
        seeds = [r["seed"] for r in v["per_seed"]]
        label = f"{k} (seed {seeds[0]})" if len(seeds) == 1 else f"{k} (mean of {len(seeds)} seeds)"
        ax1.plot(c[:, 0], c[:, 1], style, label=label)
        ax2.plot(c[:, 0], c[:, 2], style, label=k)
    cfg = result["config"]
    ax1.set(xlabel="step", ylabel="held-out NE", title="normalized entropy (lower is better)")
    ax2.set(xlabel="step", ylabel="held-out AUC", title="AUC")
    ne_all = [p[1] for v in result["variants"].values() for p in v["curve"][1:]]
    if ne_all:
        ax1.set_ylim(min(ne_all) - 0.01, min(max(ne_all), 1.0) + 0.01)
    ax1.legend()
    fig.suptitle(f"DMT quality: {cfg['tower_module']} towers, compression {cfg['compression']}, "
                 f"ARI learned {result['ari']['learned']:.2f} / random {result['ari']['random']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(result: dict) -> None:
    print()
    steps = result["config"]["steps"]
    third = min(result["variants"]["flat"]["ne_at_step"], key=lambda k: abs(int(k) - steps // 3))
    print(f"mean (std) over initial-weight seeds {[r['seed'] for r in result['variants']['flat']['per_seed']]}")
    print(f"{'variant':<16} {'seeds':>5} {'NE':>8} {'(std)':>8} {'AUC':>8} {'rel NE vs flat':>15} "
          f"{'at step ' + str(third):>16}")
    for k, v in result["variants"].items():
        print(f"{k:<16} {len(v['per_seed']):>5} {v['ne']:8.4f} {v['ne_std']:8.4f} {v['auc']:8.4f} "
              f"{100 * v['rel_ne_vs_flat']:+14.2f}% {100 * v['rel_ne_vs_flat_at_step'][third]:+15.2f}%")
    ari = result["ari"]
    print(f"ARI vs planted groups: learned {ari['learned']:.3f}, random {ari['random']:.3f}; learned partitioner "
          f"given the planted groups as affinity: {ari['learned_given_planted_affinity']:.3f}")
    for k in result["towers"]:
        print(f"  {k} towers: {result['towers'][k]}")
    print(f"  planted:  {result['planted_groups']}")
    bal, lim = result["plan_balance"], result["learned_partitioner_limits"]
    print("memory imbalance: " + ", ".join(f"{k} {v['memory_imbalance']:.3f}" for k, v in bal.items())
          + f"; learned partitioner's limit {lim['memory']:.3f}")
    w = result["width_reduction"]["learned"]
    print(f"cross-host width reduction: {w['in_width']} -> {w['out_width']} ({w['reduction']:.2f}x)")
    for k, d in result["affinity_diagnostic"].items():
        print(f"affinity {k} on the trained flat model: within-group mean {d['within_group_mean']:.4f} "
              f"(min {d['within_group_min']:.4f}), cross-group mean {d['cross_group_mean']:.4f} "
              f"(max {d['cross_group_max']:.4f})")
    print(f"identity max |NE diff| vs flat: {result['variants']['dmt-identity']['max_abs_ne_diff_vs_flat']:.2e}")
    print("targets:")
    for k, t in result["targets"].items():
        print(f"  {k:<26} {t['value']:+.4f}  target {t['target']:<32} {'MET' if t['met'] else 'NOT MET'}")
    o = result["oracle"]
    print(f"oracle (true logit): NE {o['ne']:.4f}, AUC {o['auc']:.4f}")
    print(f"runtime {result['runtime_s']['total']:.1f} s")


if __name__ == "__main__":
    main()
