"""The learned partitioner at scale: the sampled interaction affinity.

A DLRM whose over-arch reads only within-group dot products (benchmarks/partition_scale.py)
must have its 8 planted groups recovered (ARI >= 0.9) at 64 features in CI, 256 and 1,000
behind @pytest.mark.slow; the sampled affinity must see the same pairs as the exact one.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from benchmarks.partition_scale import (
    GROUPS,
    measure,
    planted_dlrm,
    planted_groups,
    planted_inputs,
    towers_ari,
)
from dmt_fx import DMTError, Topology
from dmt_fx.bench.metrics import adjusted_rand_index
from dmt_fx.compiler.affinity import EXACT_MAX_FEATURES, interaction_affinity, interaction_matrix, sampled_probes
from dmt_fx.compiler.analysis import analyze
from dmt_fx.compiler.capture import capture
from dmt_fx.compiler.partitioners.learned import _unit_weights, learned_plan
from dmt_fx.compiler.partitioners.search import SWAP_POOL, SWAP_POOL_ABOVE, Assignment


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads per process can be 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def _planted(num_features: int, batch: int = 64):
    model, inputs = planted_dlrm(num_features), planted_inputs(num_features, batch)
    return model, inputs, analyze(*capture(model, inputs))


def test_ari_helper() -> None:
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) < 0.0
    assert towers_ari(planted_groups(16, 4), planted_groups(16, 4)) == 1.0


def test_learned_recovers_planted_groups_at_64_features() -> None:
    """64 features > EXACT_MAX_FEATURES: method='auto' samples (64 gradient runs, not 2,081)."""
    model, inputs, sites = _planted(64)
    assert len(sites.features) > EXACT_MAX_FEATURES
    plan = learned_plan(sites, Topology.parse(f"{GROUPS}x1"), {}, model=model, example_inputs=inputs, seed=0)
    assert towers_ari([list(t.features) for t in plan.towers], planted_groups(64)) >= 0.9


def test_sampled_separates_within_from_cross_pairs() -> None:
    model, inputs, sites = _planted(64)
    names, matrix = interaction_matrix(model, sites, inputs, method="sampled", seed=0)
    assert names == [f.name for f in sites.features]
    group = torch.arange(64) % GROUPS
    same = group[:, None] == group[None, :]
    off = ~torch.eye(64, dtype=torch.bool)
    within, cross = matrix[same & off], matrix[~same]
    assert within.mean() > 20 * cross.mean()  # noise floor far below the planted pairs
    assert float(matrix.max()) == 1.0 and torch.equal(matrix, matrix.T) and float(matrix.min()) >= 0.0
    few = [interaction_matrix(model, sites, inputs, probes=4, seed=s)[1] for s in (0, 0, 1)]
    assert torch.equal(few[0], few[1]) and not torch.equal(few[0], few[2])  # deterministic for a seed


def test_sampled_agrees_with_exact_on_a_small_model() -> None:
    """Same quantity: on 12 features the exact and sampled pair strengths correlate closely."""
    model, inputs, sites = _planted(12)
    exact = interaction_affinity(model, sites, inputs, method="exact")
    sampled = interaction_affinity(model, sites, inputs, method="sampled", probes=64)
    keys = sorted(exact)
    a, b = torch.tensor([exact[k] for k in keys]), torch.tensor([sampled[k] for k in keys])
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.95
    assert interaction_affinity(model, sites, inputs) == exact  # auto: exact at 12 features


def test_unknown_method() -> None:
    model, inputs, sites = _planted(12, batch=8)
    with pytest.raises(DMTError, match="'auto', 'exact' or 'sampled'"):
        interaction_matrix(model, sites, inputs, method="hessian")


@pytest.mark.slow
@pytest.mark.parametrize("num_features", [256, 1000])
def test_learned_at_scale(num_features) -> None:
    row = measure(num_features, batch=64, probes=32)
    assert row["ari"] >= 0.9, row


def test_progress_bar_only_when_asked(capfd) -> None:
    model, inputs, sites = _planted(12, batch=8)
    interaction_matrix(model, sites, inputs, method="sampled", probes=2)
    assert capfd.readouterr().err == ""  # stderr is not a terminal under pytest: no bar
    interaction_matrix(model, sites, inputs, method="sampled", probes=2, progress=True)
    assert "affinity (sampled)" in capfd.readouterr().err


def test_default_probes_grow_with_features_over_batch() -> None:
    """32 up to F = 213 sqrt(B) (every figure measured before the rule stays as it was), then
    0.15 F / sqrt(B)."""
    assert sampled_probes(64, 64) == sampled_probes(1000, 64) == sampled_probes(1706, 64) == 32
    assert sampled_probes(10_000, 64) == 188 and sampled_probes(3000, 64) == 57
    assert sampled_probes(10_000, 10_000) == 32


def test_unit_weights_sum_the_affinity_of_each_units_features() -> None:
    """index_add sums equal the dense membership product, with a unit of several features and a
    feature the matrix does not name."""
    g = torch.Generator().manual_seed(0)
    names = [f"f{i}" for i in range(7)]
    matrix = torch.rand(7, 7, generator=g, dtype=torch.float64)
    matrix = ((matrix + matrix.T) / 2).fill_diagonal_(0.0).numpy()
    units = [["f0", "f3"], ["f1"], ["f2", "f4", "f6"], ["f5", "unnamed"]]
    member = np.zeros((len(units), len(names)))
    for u, unit in enumerate(units):
        for f in unit:
            if f in names:
                member[u, names.index(f)] = 1.0
    dense = member @ matrix @ member.T
    np.fill_diagonal(dense, 0.0)
    np.testing.assert_allclose(_unit_weights(units, names, matrix), dense, rtol=0, atol=1e-12)


def _blocks(n: int, groups: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    group = np.arange(n) % groups
    w = (group[:, None] == group[None, :]) + 0.3 * rng.random((n, n))
    w = (w + w.T) / 2
    np.fill_diagonal(w, 0.0)
    return w


def test_swaps_above_the_pool_size_are_scored_among_the_pool_only() -> None:
    """Above SWAP_POOL_ABOVE units a step scores n x T moves and at most SWAP_POOL^2 swaps (not
    n^2), and the local search still finds planted blocks from an interleaved start within tight
    limits (a pool of the best movers overall, not per tower pair, stops at ARI 0.17 here)."""
    n, groups = SWAP_POOL_ABOVE + 48, 4
    share = [1.0 / n] * n
    start = [(u // groups) % groups for u in range(n)]  # every tower mixes every group
    state = Assignment(start, groups, share, share, _blocks(n, groups), (1.05, 1.05))
    gain, delta = state.steps()
    m = len(state.pool)
    assert 0 < m <= SWAP_POOL and len(gain) == len(delta) == n * groups + m * m
    assert list(state.pool) == sorted(set(state.pool))
    state.improve(8 * n * groups)
    found = [[u for u in range(n) if state.where[u] == t] for t in range(groups)]
    assert adjusted_rand_index([u % groups for u in range(n)], list(state.where)) == 1.0, [len(f) for f in found]


def test_swaps_up_to_the_pool_size_score_every_pair() -> None:
    n, groups = 40, 4
    share = [1.0 / n] * n
    state = Assignment([u % groups for u in range(n)], groups, share, share, _blocks(n, groups), (1.2, 1.2))
    gain, _ = state.steps()
    assert len(gain) == n * groups + n * n and list(state.pool) == list(range(n))
