"""Feature affinity from a model's own embeddings: the signal of the learned Tower Partitioner.

`feature_embeddings` runs the ORIGINAL model once on one batch and records every feature's
pooled embedding per sample, e_i(x) in R^{d_i}. `feature_affinity` turns those into a
symmetric pairwise affinity in [0, 1]:

    affinity(i, j) = debiased linear CKA(E_i, E_j)
                   = HSIC_1(K_i, K_j) / sqrt(HSIC_1(K_i, K_i) HSIC_1(K_j, K_j)),  K_i = E_i E_i^T,

with HSIC_1 the unbiased HSIC estimator (Song et al. 2012; "debiased CKA", Nguyen et al.
2021), clipped to [0, 1]; E_i is the (batch x d_i) matrix of feature i's pooled embeddings.

Why this measure:
  * It is the strength of the linear statistical dependence between two features' per-sample
    embeddings: 1 when one is an orthogonal/isotropically scaled copy of the other, about 0 when
    they are independent. Features whose embeddings co-vary carry shared, interacting
    information, which a tower module can model (and compress) before the cross-tower exchange.
  * It is defined for features of different dims (no projection, no PCA sign ambiguity), and
    invariant to rotations and to the scale of each table, so table init or width do not dominate.
  * For 1-d embeddings it is the squared Pearson correlation across samples.
  * Debiasing removes the O(d_i d_j / batch) floor the plain (biased) CKA has for independent
    features, which matters with a small example batch (below 4 samples, where the unbiased
    estimator is undefined, the biased one is used).
  * Closed form in float64: deterministic, no random state. Cost O(batch x d_i x d_j) per pair.
A feature whose embeddings do not vary over the batch (e.g. every bag empty) has affinity 0.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from dmt_fx.analysis import ModelSites
from dmt_fx.transform import run_with_hooks

log = logging.getLogger("dmt_fx")


def _ebc_key_of(fqn: str, ebc: EmbeddingBagCollection) -> dict[tuple[str, str], str]:
    """(table path, KJT key) -> KeyedTensor key. TorchRec names a key read by two tables
    `key@table`; `_embedding_names` follows the tables' order, so zip it with the configs."""
    pairs = [(f"{fqn}.embedding_bags.{config.name}", key)
             for config in ebc.embedding_bag_configs() for key in config.feature_names]
    return dict(zip(pairs, ebc._embedding_names))


def _per_sample(output: torch.Tensor) -> torch.Tensor:
    """(B, d), (B, 1, d) or (B, L, d) -> (B, d) (mean over any middle dimensions)."""
    out = output.detach().to(torch.float64)
    if out.dim() > 2:
        out = out.reshape(out.shape[0], -1, out.shape[-1]).mean(dim=1)
    return out.reshape(out.shape[0], -1).clone()


def feature_embeddings(model: nn.Module, sites: ModelSites, example_inputs: Iterable[Any]) -> dict[str, torch.Tensor]:
    """Run the original model once; each feature's pooled embedding per sample, (B, dim), float64.

    Forward hooks sit on the embedding modules the analysis found (by module path): a TorchRec
    EmbeddingBagCollection gives a KeyedTensor, read column block by column block; an
    nn.EmbeddingBag / nn.Embedding called k times gives features `fqn`, `fqn@1`, ... in call order
    (the analysis names them in graph order, which is call order). Features whose module is not
    a submodule of `model` are left out (with a warning)."""
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    feature_of = sites._feature_index
    by_module: dict[str, list] = {}
    for site in sites.sites:
        by_module.setdefault(site.module, []).append(site)
    found: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}

    def hook(fqn, module, args, output):
        k = calls[fqn] = calls.get(fqn, -1) + 1
        if k >= len(by_module[fqn]):
            return
        site = by_module[fqn][k]
        if site.kind == "torchrec_ebc" and isinstance(module, EmbeddingBagCollection):
            columns = output.to_dict()
            key_of = _ebc_key_of(fqn, module)
            for name in site.features:
                f = feature_of[name]
                column = key_of.get((f.table, f.key), f.key)
                if column in columns:
                    found[name] = _per_sample(columns[column])
        elif isinstance(output, torch.Tensor):
            for name in site.features:
                found[name] = _per_sample(output)

    handles = []
    for fqn in by_module:
        try:
            module = model.get_submodule(fqn)
        except AttributeError:
            continue
        handles.append(module.register_forward_hook(functools.partial(hook, fqn)))
    run_with_hooks(model, inputs, handles)
    missing = [f.name for f in sites.features if f.name not in found]
    if missing:
        log.warning("affinity: no embeddings observed for features %s (affinity 0 for them)", missing)
    return {f.name: found[f.name] for f in sites.features if f.name in found}


# ---------------------------------------------------------------- affinity


class _Stats:
    """What the HSIC estimators need of one feature's embeddings E (n x d), centred."""

    def __init__(self, e: torch.Tensor) -> None:
        self.x = e - e.mean(dim=0, keepdim=True)
        n = self.x.shape[0]
        self.diag = (self.x * self.x).sum(dim=1)  # K_ii
        self.rows = self.x @ self.x.sum(dim=0) - self.diag  # row sums of K with a zeroed diagonal
        self.total = float(self.rows.sum())
        self.gram = self.x.T @ self.x  # for the biased estimator (n < 4)
        self.n = n


def _hsic(a: _Stats, b: _Stats, cross: torch.Tensor) -> float:
    """Unbiased HSIC_1 (without the constant 1/(n(n-3)), which cancels in CKA); `cross` = X_a^T X_b."""
    n = a.n
    trace = float((cross * cross).sum()) - float(a.diag @ b.diag)  # tr(K~_a K~_b)
    return trace + a.total * b.total / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * float(a.rows @ b.rows)


def _cka(a: _Stats, b: _Stats, self_a: float, self_b: float) -> float:
    if a.n != b.n or a.n < 2:
        return 0.0
    cross = a.x.T @ b.x
    if a.n < 4:  # biased linear CKA
        num = float((cross * cross).sum())
        den = float(torch.linalg.matrix_norm(a.gram)) * float(torch.linalg.matrix_norm(b.gram))
        return min(max(num / den, 0.0), 1.0) if den > 0 else 0.0
    if self_a <= 0 or self_b <= 0:
        return 0.0
    return min(max(_hsic(a, b, cross) / (self_a * self_b) ** 0.5, 0.0), 1.0)


def feature_affinity(embeddings: Mapping[str, torch.Tensor]) -> dict[tuple[str, str], float]:
    """Debiased linear CKA between every two features (see the module docstring).

    Symmetric: both (a, b) and (b, a) are keys, with the same value; no (a, a) entries."""
    names = list(embeddings)
    stats = {n: _Stats(embeddings[n].detach().to(torch.float64).reshape(embeddings[n].shape[0], -1))
             for n in names}
    self_hsic = {n: (_hsic(s, s, s.gram) if s.n >= 4 else 0.0) for n, s in stats.items()}
    out: dict[tuple[str, str], float] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            value = round(_cka(stats[a], stats[b], self_hsic[a], self_hsic[b]), 12)
            out[(a, b)] = out[(b, a)] = value
    return out


def within_tower_affinity(groups: Iterable[Iterable[str]], affinity: Mapping[tuple[str, str], float]) -> float:
    """Share of the total pairwise affinity that stays inside towers (1.0 when there is none)."""
    tower = {f: t for t, g in enumerate(groups) for f in g}
    total = inside = 0.0
    for (a, b), value in affinity.items():
        if a < b and a in tower and b in tower:
            total += value
            inside += value if tower[a] == tower[b] else 0.0
    return inside / total if total > 0 else 1.0
