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

Why not embedding similarity (`feature_affinity`, dmt_fx.compiler.cka, diagnostics only):
it measures co-occurrence, and features that interact in the label are often drawn
independently; on the quality benchmark CKA was ~0 for every pair (towers ARI 0.07).

Two estimators (method=; "auto" picks exact up to EXACT_MAX_FEATURES = 24 features):
* exact: 1 + F + F(F-1)/2 no-grad runs (F = 16, 4096 samples: ~1 s; O(F^2)), no noise.
* sampled: 2K runs with gradients (K = probes, default `sampled_probes`). Each sample's
  embeddings become e_i + x_i (e_i' - e_i), x in [0,1]^F (x_i = 1 is the swap above); for
  random signs s in {-1,1}^F (per sample and probe) one backward at x = (1+s)/2 and one at
  its complement give D_j = dF/dx_j(x) - dF/dx_j(1-x). If F is bilinear in the x's (a dot
  interaction with the over-arch in one linear region), D_j = sum_i delta_ji s_i exactly:
  main effects cancel in the antithetic pair, and z = D_j s_i is unbiased for delta_ij
  with noise sum_{l != i} delta_jl^2 (j's other partners only); ((sum_k z_k)^2 - sum_k
  z_k^2) / (K(K-1)) is unbiased for delta_ij^2 (averaged over samples, symmetrised,
  clipped at 0). In general: the effect of swapping i on the slope in j, averaged over
  random contexts (others swapped or not).
  Cost: 2K forward + backward passes plus O(B F^2 K) arithmetic for the pair sums. Planted
  groups (benchmarks/partition_scale.py): ARI 1.0 at 64 and 256, 0.998 at 1,000, 0.98 at 10,000.
  What it can miss or blur: additive pairs get noise, not 0 (floor ~ g / (K sqrt(B)) of a
  planted pair's value for g partners per feature); a pair whose interaction lives only
  at x_j strictly between 0 and 1 (the slope is read at the swap's end points, not
  integrated along it); interactions of three or more features are spread over their
  pairs; a model that is not differentiable in its pooled embeddings is refused (use
  method="exact"). An example batch of one sample gives every pair 0 (with a warning).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import sys
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
import torch.nn as nn
from rich.console import Console
from rich.progress import Progress
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedTensor

from dmt_fx._compat import ebc_embedding_names, pytree
from dmt_fx.compiler.cka import feature_affinity as feature_affinity  # re-exported: its old home
from dmt_fx.compiler.eager import eval_mode, hooked_runs, run_with_hooks
from dmt_fx.compiler.kept_affinity import within_tower_affinity as within_tower_affinity  # re-exported
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.sites import ModelSites

log = logging.getLogger("dmt_fx")


def _ebc_key_of(fqn: str, ebc: EmbeddingBagCollection) -> dict[tuple[str, str], str]:
    """(table path, KJT key) -> KeyedTensor key. TorchRec names a key read by two tables
    `key@table`; `_embedding_names` follows the tables' order, so zip it with the configs."""
    pairs = [(f"{fqn}.embedding_bags.{config.name}", key)
             for config in ebc.embedding_bag_configs() for key in config.feature_names]
    return dict(zip(pairs, ebc_embedding_names(ebc)))


def _per_sample(output: torch.Tensor) -> torch.Tensor:
    """(B, d), (B, 1, d) or (B, L, d) -> (B, d) (mean over any middle dimensions)."""
    out = output.detach().to(torch.float64)
    if out.dim() > 2:
        out = out.reshape(out.shape[0], -1, out.shape[-1]).mean(dim=1)
    return out.reshape(out.shape[0], -1).clone()


def _kt_columns(fqn: str, module: EmbeddingBagCollection, features: Iterable[str], feature_of: Mapping[str, Any],
                output: KeyedTensor) -> list[tuple[str, int, int]]:
    """(feature, first column, end column) of each of `features` in an EBC's KeyedTensor."""
    key_of = _ebc_key_of(fqn, module)
    keys, offsets = output.keys(), output.offset_per_key()
    position = {k: i for i, k in enumerate(keys)}
    found = []
    for name in features:
        f = feature_of[name]
        k = position.get(key_of.get((f.table, f.key), f.key))
        if k is not None:
            found.append((name, offsets[k], offsets[k + 1]))
    return found


def _hooks(model: nn.Module, sites: ModelSites, on_output: Callable, on_kt: Callable | None = None) -> list:
    """Forward hooks on the embedding modules the analysis found (by module path).

    on_output(name, output, read, write) is called for every feature `name` whose lookup the
    module call produced: read() gives its pooled embedding per sample (a view of the output),
    write(new) puts `new` in its place and returns the output to hand on. A TorchRec
    EmbeddingBagCollection gives a KeyedTensor, one column block per feature; an
    nn.EmbeddingBag / nn.Embedding called k times gives features `fqn`, `fqn@1`, ... in call
    order (the analysis names them in graph order, which is call order). Features whose module
    is not a submodule of `model` are left out. `on_kt(columns, output)`, when given, takes an
    EBC's whole KeyedTensor with its [(feature, lo, hi)] columns instead of one call per feature."""
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
            columns = _kt_columns(fqn, module, site.features, feature_of, output)
            if on_kt is not None:  # the whole KeyedTensor at once (one op instead of one per feature)
                return on_kt(columns, output)
            for name, lo, hi in columns:
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
    return _output_columns(output, batch).detach().to(torch.float64)


def _output_columns(output: Any, batch: int) -> torch.Tensor:
    """(batch, k), differentiable: every floating tensor leaf of the output whose first dim is the batch."""
    leaves = [t for t in pytree.tree_leaves(output)
              if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() >= 1 and t.shape[0] == batch]
    if not leaves:
        raise DMTError(f"a model output without a per-sample tensor ({type(output).__name__})",
                       f"an output holding a float tensor of shape ({batch}, ...) for the {batch} example samples",
                       ["return the logits (batch, ...) from forward()",
                        "or pass partitioner='balanced', or your own plan=..."])
    return torch.cat([t.reshape(batch, -1) for t in leaves], dim=1)


EXACT_MAX_FEATURES = 24  # method="auto": the exact pairs up to here (<= 301 runs, no sampling noise)
DEFAULT_PROBES = 32  # sampled: at least 2 x 32 forward + backward passes


def sampled_probes(num_features: int, batch: int) -> int:
    """The default K = 0.15 F / sqrt(B), at least 32: a feature's noise summed over a tower grows
    as F / (K sqrt(B)) (its pairs share its gradient); ARI 0.96 at 3,000 planted features, B = 64."""
    return max(DEFAULT_PROBES, math.ceil(0.15 * num_features / math.sqrt(max(batch, 1))))


def interaction_affinity(model: nn.Module, sites: ModelSites, example_inputs: Iterable[Any], *,
                         method: str = "auto", probes: int | None = None, seed: int = 0,
                         progress: bool | None = None) -> dict[tuple[str, str], float]:
    """How strongly the trained model combines features i and j NON-additively: the learned
    Tower Partitioner's affinity (see the module docstring). Symmetric, in [0, 1] (divided by
    the largest pair), no (a, a) entries; deterministic for a seed.

    method: "exact" (1 + F + F(F-1)/2 runs), "sampled" (2 x probes gradient runs) or "auto"
    (exact up to EXACT_MAX_FEATURES features). progress: a progress bar on stderr (None: only
    when stderr is a terminal)."""
    names, matrix = interaction_matrix(model, sites, example_inputs, method=method, probes=probes, seed=seed,
                                       progress=progress)
    values = matrix.tolist()
    return {(a, b): values[i][j] for i, a in enumerate(names) for j, b in enumerate(names) if i != j}


def interaction_matrix(model: nn.Module, sites: ModelSites, example_inputs: Iterable[Any], *,
                       method: str = "auto", probes: int | None = None, seed: int = 0,
                       progress: bool | None = None, clip: bool = True) -> tuple[list[str], torch.Tensor]:
    """interaction_affinity as (feature names, F x F float64 matrix, zero diagonal). clip=False
    keeps the sampled estimate's negative values (unbiased: its noise then sums to ~0 over a tower)."""
    names = [f.name for f in sites.features]
    if method not in ("auto", "exact", "sampled"):
        raise DMTError(f"affinity method {method!r}", "'auto', 'exact' or 'sampled'", ["use method='auto'"])
    exact = method == "exact" or (method == "auto" and len(names) <= EXACT_MAX_FEATURES)
    inputs = _inputs(example_inputs)
    with _progress_bar(progress) as bar:
        raw = _exact(model, sites, inputs, bar) if exact else _sampled(model, sites, inputs, probes, seed, bar)
    raw = (raw.clamp(min=0.0) if clip else raw).fill_diagonal_(0.0)
    top = float(raw.max()) if raw.numel() else 0.0
    return names, (raw / top).round(decimals=12) if top > 0 else raw


@contextlib.contextmanager
def _progress_bar(progress: bool | None) -> Iterator[Callable[[str, int], Callable[[], None]]]:
    """Yields start(label, total) -> advance(); a rich bar on stderr when asked (or on a terminal)."""
    if not (sys.stderr.isatty() if progress is None else progress):
        yield lambda label, total: lambda: None
        return
    with Progress(console=Console(stderr=True, force_terminal=True), transient=True) as bar:
        def start(label: str, total: int) -> Callable[[], None]:
            task = bar.add_task(label, total=total)
            return lambda: bar.advance(task)
        yield start


def _batch_of(model: nn.Module, sites: ModelSites, inputs: tuple) -> int:
    """The example batch size (one plain run; a failing run is an ExampleInputsError)."""
    seen: list[int] = []
    run_with_hooks(model, inputs, _hooks(model, sites, lambda name, out, read, write: seen.append(read().shape[0])
                                         or out))
    return seen[0] if seen else 0


def _too_small(batch: int) -> bool:
    if batch < 2:
        log.warning("learned partitioner: example batch of %d sample(s); the interaction affinity needs "
                    ">= 2 (every pair gets 0)", batch)
    return batch < 2


def _exact(model: nn.Module, sites: ModelSites, inputs: tuple, bar: Callable) -> torch.Tensor:
    """Mean squared double difference of every pair: 1 + F + F(F-1)/2 runs, no gradients."""
    names = [f.name for f in sites.features]
    n = len(names)
    strength = torch.zeros(n, n, dtype=torch.float64)
    swap: set[str] = set()
    seen: dict[str, int] = {}

    def perturb(name: str, output: Any, read: Callable, write: Callable) -> Any:
        current = read()
        seen[name] = current.shape[0]
        if name not in swap:
            return output
        return write(current.roll(1, dims=0))  # a derangement of the batch for batch >= 2

    advance = bar("affinity (exact pairs)", 1 + n + n * (n - 1) // 2)
    with hooked_runs(model, inputs, _hooks(model, sites, perturb)) as run:
        raw = run()
        batch = next(iter(seen.values()), 0)
        if _too_small(batch):
            return strength
        base = _per_sample_output(raw, batch)
        single = {}
        for name in names:
            swap.clear()
            swap.add(name)
            single[name] = _per_sample_output(run(), batch) if name in seen else base
            advance()
        for i, a in enumerate(names):
            for j in range(i + 1, n):
                b = names[j]
                if a in seen and b in seen:
                    swap.clear()
                    swap.update((a, b))
                    delta = _per_sample_output(run(), batch) - single[a] - single[b] + base
                    strength[i, j] = strength[j, i] = float((delta * delta).mean())
                advance()
    return strength


def _sampled(model: nn.Module, sites: ModelSites, inputs: tuple, probes: int | None, seed: int,
             bar: Callable) -> torch.Tensor:
    """Randomised antithetic design on the mixing weights (module docstring): 2 x probes runs with
    gradients; returns the unbiased estimate of mean delta_ij^2 (symmetrised, may dip below 0)."""
    n = len(sites.features)
    batch = _batch_of(model, sites, inputs)
    probes = sampled_probes(n, batch) if probes is None else probes
    if _too_small(batch) or probes < 2:
        return torch.zeros(n, n, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    mixer = _Mixer(model, sites)
    advance = bar("affinity (sampled)", probes)
    diffs, signs = [], []
    try:
        for _ in range(probes):
            sign = torch.randint(0, 2, (batch, n), generator=generator, dtype=torch.float64) * 2 - 1
            x = (1 + sign) / 2  # a vertex of the mixing cube and its complement
            diffs.append(mixer.gradient(inputs, x, batch) - mixer.gradient(inputs, 1 - x, batch))  # (k, B, F)
            signs.append(sign)
            advance()
    finally:
        mixer.close()
    return _pair_strength(torch.stack(diffs), torch.stack(signs))


def _pair_strength(diffs: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """U-statistic of beta_ji^2 from z_k = D_kj s_ki over the K probes, summed over samples (8 at
    a time, fewer above 1,448 features) and output columns: (sum_k z)^2 - sum_k z^2 over K(K-1)."""
    probes, columns, batch, n = diffs.shape
    chunk = max(1, min(8, 2 ** 24 // max(1, n * n)))
    total, squares = torch.zeros(n, n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for c in range(columns):
        for lo in range(0, batch, chunk):
            d, s = diffs[:, c, lo:lo + chunk], signs[:, lo:lo + chunk]
            total += torch.einsum("kbj,kbi->bji", d, s).square_().sum(0)  # in place: F x F passes dominate
            squares += (d * d).sum((0, 1))
    total -= squares.unsqueeze(1)
    total /= probes * (probes - 1) * columns * batch
    return total.add_(total.T.clone()).div_(2)


class _Mixer:
    """Hooks that replace each feature's pooled embedding e_i by e_i + x_i (e_i' - e_i), e_i' the
    previous sample's, and the gradient of each output column with respect to x (B, F)."""

    def __init__(self, model: nn.Module, sites: ModelSites) -> None:
        self.model, self.x = model, None
        self.index = {f.name: i for i, f in enumerate(sites.features)}
        self.handles = _hooks(model, sites, self._one, self._kt)

    def _weight(self, i: int, like: torch.Tensor) -> torch.Tensor:
        w = self.x[:, i].to(like.dtype)
        return w.reshape(w.shape[0], *([1] * (like.dim() - 1)))

    def _one(self, name: str, output: Any, read: Callable, write: Callable) -> Any:
        current = read()
        return write(current + self._weight(self.index[name], current) * (current.roll(1, dims=0) - current))

    def _kt(self, columns: list[tuple[str, int, int]], kt: KeyedTensor) -> KeyedTensor:
        values = kt.values()
        which = torch.full((values.shape[kt.key_dim()],), len(self.index), dtype=torch.long)
        for name, lo, hi in columns:
            which[lo:hi] = self.index[name]
        x = torch.cat([self.x, torch.zeros_like(self.x[:, :1])], dim=1).to(values.dtype)[:, which]  # (B, D)
        shape = [1] * values.dim()
        shape[0], shape[kt.key_dim()] = x.shape[0], x.shape[1]
        mixed = values + x.reshape(shape) * (values.roll(1, dims=0) - values)
        return KeyedTensor(keys=kt.keys(), length_per_key=kt.length_per_key(), values=mixed, key_dim=kt.key_dim())

    def gradient(self, inputs: tuple, x: torch.Tensor, batch: int) -> torch.Tensor:
        """d output[:, c] / d x for every column c: (k, B, F) float64."""
        self.x = x.clone().requires_grad_(True)
        with eval_mode(self.model), torch.enable_grad():
            try:
                out = _output_columns(self.model(*inputs), batch)
            except DMTError:
                raise
            except Exception as exc:
                raise DMTError(f"the model fails when run with gradients: {type(exc).__name__}: {exc}",
                               "a model differentiable in its pooled embeddings (method='sampled')",
                               ["pass method='exact' (no gradients) for a few features, or your own plan=..."]) from exc
            grads = [torch.autograd.grad(out[:, c].sum(), self.x, retain_graph=c + 1 < out.shape[1],
                                         allow_unused=True)[0] for c in range(out.shape[1])]
        self.x = None
        return torch.stack([g if g is not None else torch.zeros(batch, len(self.index), dtype=torch.float64)
                            for g in grads]).to(torch.float64)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
