"""Feature affinity from a trained model: the signal of the learned Tower Partitioner.

Interaction affinity (`interaction_affinity`, what partitioner="learned" uses). A tower
module can only model interactions among the features of its own tower, so features belong
together when the trained model combines them non-additively. For one batch of
example_inputs, let f(x) be the model's per-sample output (its logits), and f_S(x) the same
output when the pooled embeddings of the features in S are replaced by those of another
sample of the batch (sample b gets sample b-1's: a fixed derangement, so the result is
deterministic). The pair's interaction on sample x is the double difference

    delta_ij(x) = f_ij(x) - f_i(x) - f_j(x) + f(x),

the pairwise term of a functional-ANOVA / Friedman-H style decomposition with the batch as
reference distribution. It is exactly 0 for every x when f is additive in e_i and e_j
(f = g(e_i, rest) + h(e_j, rest)), whatever g and h are, so main effects, popularity and
embedding scale do not count; for a DLRM dot interaction followed by a piecewise-linear
over-arch it is w_ij (e_i - e_i')·(e_j - e_j') in each linear region, the dot product's
weight times how much that dot product varies. affinity(i, j) = mean over samples (and
output columns) of delta_ij^2, divided by the largest pair's value: in [0, 1], symmetric.

Why not embedding similarity: an earlier version used the debiased linear CKA of two
features' per-sample embeddings (`feature_affinity`, kept for diagnostics). It measures
co-occurrence, and features that interact in the label are often drawn independently (the
quality benchmark's generator does exactly that): CKA was ~0 for every pair there and the
towers it chose matched the planted groups with ARI 0.07; the interaction affinity
separates within-group pairs (min 0.52) from cross-group ones (max 0.009), ARI 1.0.

Cost: 1 + F + F(F-1)/2 eager runs of the original model on the example batch (no
gradients); F = 16 and a 4096-sample batch take about a second. Quadratic in F: with
hundreds of features pass your own plan (or affinity to partitioners.learned.learned_plan) instead.
An example batch of one sample gives every pair 0 (with a warning).

Embedding CKA (`feature_embeddings` + `feature_affinity`):

    affinity(i, j) = debiased linear CKA(E_i, E_j)
                   = HSIC_1(K_i, K_j) / sqrt(HSIC_1(K_i, K_i) HSIC_1(K_j, K_j)),  K_i = E_i E_i^T,

with HSIC_1 the unbiased HSIC estimator (Song et al. 2012; "debiased CKA", Nguyen et al.
2021), clipped to [0, 1]; E_i is the (batch x d_i) matrix of feature i's pooled
embeddings: the strength of the linear dependence of two features' embeddings, defined for
different dims, invariant to rotation and scale (below 4 samples the biased CKA is used).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn as nn
from torch.utils import _pytree as pytree
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedTensor

from dmt_fx.compiler.eager import hooked_runs, run_with_hooks
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.sites import ModelSites

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


def _hooks(model: nn.Module, sites: ModelSites, on_output: Callable) -> list:
    """Forward hooks on the embedding modules the analysis found (by module path).

    on_output(name, output, read, write) is called for every feature `name` whose lookup the
    module call produced: read() gives its pooled embedding per sample (a view of the output),
    write(new) puts `new` in its place and returns the output to hand on. A TorchRec
    EmbeddingBagCollection gives a KeyedTensor, one column block per feature; an
    nn.EmbeddingBag / nn.Embedding called k times gives features `fqn`, `fqn@1`, ... in call
    order (the analysis names them in graph order, which is call order). Features whose module
    is not a submodule of `model` are left out."""
    feature_of = {f.name: f for f in sites.features}
    by_module: dict[str, list] = {}
    for site in sites.sites:
        by_module.setdefault(site.module, []).append(site)
    calls: dict[str, int] = {}

    def hook(fqn: str, module: nn.Module, args: tuple, output: Any) -> Any:
        k = calls[fqn] = calls.get(fqn, -1) + 1
        if k >= len(by_module[fqn]):
            return None
        site = by_module[fqn][k]
        if site.kind == "torchrec_ebc" and isinstance(module, EmbeddingBagCollection):
            key_of = _ebc_key_of(fqn, module)
            keys, offsets = output.keys(), output.offset_per_key()
            for name in site.features:
                f = feature_of[name]
                column = key_of.get((f.table, f.key), f.key)
                if column not in keys:
                    continue
                lo, hi = offsets[keys.index(column)], offsets[keys.index(column) + 1]
                output = on_output(name, output, functools.partial(_kt_read, output, lo, hi),
                                   functools.partial(_kt_write, output, lo, hi))
            return output
        if isinstance(output, torch.Tensor):
            for name in site.features:
                output = on_output(name, output, lambda out=output: out, lambda new: new)
            return output
        return None

    handles = [model.register_forward_pre_hook(lambda *_: calls.clear())]  # each run counts calls anew
    for fqn in by_module:
        try:
            module = model.get_submodule(fqn)
        except AttributeError:
            continue
        handles.append(module.register_forward_hook(functools.partial(hook, fqn)))
    return handles


def _kt_read(kt: KeyedTensor, lo: int, hi: int) -> torch.Tensor:
    return kt.values().narrow(kt.key_dim(), lo, hi - lo)


def _kt_write(kt: KeyedTensor, lo: int, hi: int, new: torch.Tensor) -> KeyedTensor:
    values = kt.values().clone()
    values.narrow(kt.key_dim(), lo, hi - lo).copy_(new)
    return KeyedTensor(keys=kt.keys(), length_per_key=kt.length_per_key(), values=values, key_dim=kt.key_dim())


def _inputs(example_inputs: Iterable[Any]) -> tuple:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def feature_embeddings(model: nn.Module, sites: ModelSites, example_inputs: Iterable[Any]) -> dict[str, torch.Tensor]:
    """Run the original model once; each feature's pooled embedding per sample, (B, dim), float64.
    Features whose module is not a submodule of `model` are left out (with a warning)."""
    found: dict[str, torch.Tensor] = {}

    def record(name: str, output: Any, read: Callable, write: Callable) -> Any:
        found[name] = _per_sample(read())
        return output

    run_with_hooks(model, _inputs(example_inputs), _hooks(model, sites, record))
    missing = [f.name for f in sites.features if f.name not in found]
    if missing:
        log.warning("affinity: no embeddings observed for features %s (affinity 0 for them)", missing)
    return {f.name: found[f.name] for f in sites.features if f.name in found}


# ---------------------------------------------------------------- affinity


def _per_sample_output(output: Any, batch: int) -> torch.Tensor:
    """The model's output as (batch, k) float64: every floating tensor leaf whose first dim is the batch."""
    leaves = [t for t in pytree.tree_leaves(output)
              if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() >= 1 and t.shape[0] == batch]
    if not leaves:
        raise DMTError(f"a model output without a per-sample tensor ({type(output).__name__})",
                       f"an output holding a float tensor of shape ({batch}, ...) for the {batch} example samples",
                       ["return the logits (batch, ...) from forward()",
                        "or pass partitioner='balanced', or your own plan=..."])
    return torch.cat([t.detach().to(torch.float64).reshape(batch, -1) for t in leaves], dim=1)


def interaction_affinity(model: nn.Module, sites: ModelSites, example_inputs: Iterable[Any]) -> dict[tuple[str, str], float]:
    """How strongly the trained model combines features i and j NON-additively: the learned
    Tower Partitioner's affinity (see the module docstring). Symmetric, in [0, 1] (divided by
    the largest pair), no (a, a) entries; deterministic (no random state).

    Runs the original model 1 + F + F(F-1)/2 times on example_inputs, each time with some
    features' pooled embeddings taken from the neighbouring sample (row b gets row b-1's)."""
    inputs = _inputs(example_inputs)
    swap: set[str] = set()
    seen: dict[str, int] = {}

    def perturb(name: str, output: Any, read: Callable, write: Callable) -> Any:
        current = read()
        seen[name] = current.shape[0]
        if name not in swap:
            return output
        return write(current.roll(1, dims=0))  # a derangement of the batch for batch >= 2

    names = [f.name for f in sites.features]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    if 1 + len(names) + len(pairs) > 5000:
        log.warning("learned partitioner: %d features need %d runs of the model for their pairwise "
                    "interaction affinity; this may take long (pass plan=... to skip it)",
                    len(names), 1 + len(names) + len(pairs))
    with hooked_runs(model, inputs, _hooks(model, sites, perturb)) as run:
        raw = run()
        batch = next(iter(seen.values()), 0)
        if batch < 2:
            log.warning("learned partitioner: example batch of %d sample(s); the interaction affinity needs "
                        ">= 2 (every pair gets 0)", batch)
            return {(a, b): 0.0 for x, y in pairs for a, b in ((x, y), (y, x))}
        base = _per_sample_output(raw, batch)
        single = {}
        for name in names:
            swap.clear()
            swap.add(name)
            single[name] = _per_sample_output(run(), batch) if name in seen else base
        strength = {}
        for a, b in pairs:
            if a not in seen or b not in seen:
                strength[(a, b)] = 0.0
                continue
            swap.clear()
            swap.update((a, b))
            delta = _per_sample_output(run(), batch) - single[a] - single[b] + base
            strength[(a, b)] = float((delta * delta).mean())
    top = max(strength.values(), default=0.0)
    out: dict[tuple[str, str], float] = {}
    for (a, b), value in strength.items():
        out[(a, b)] = out[(b, a)] = round(value / top, 12) if top > 0 else 0.0
    return out


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
