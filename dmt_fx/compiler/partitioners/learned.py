"""Partitioner "learned": towers of strongly interacting features, within the balance limits.

Algorithm:
  1. Same units, shares, T (H x towers_per_domain, plans.tower_count) and bound as the balanced partitioner.
  2. Affinity: how strongly the trained model combines two features non-additively, measured
     on example_inputs by swapping their pooled embeddings with another sample's
     (dmt_fx.compiler.affinity.interaction_matrix: exact pairs up to 24 features, above that
     a sampled estimate from 2 x K gradient runs, K = max(32, 0.15 F / sqrt(batch)): the noise
     on a feature's tower grows with F). A networkx graph has the units
     as nodes, edges weighted by the summed affinity of their features (above 64 units only
     each unit's 16 strongest edges: the sampled noise floor would make it dense).
  3. Objective: maximise the affinity kept inside towers (= minimise the cut), subject to
     both imbalances <= limit, every tower non-empty. limit = the balanced bound, tightened
     by default to (the balanced plan's own imbalance + `balance_slack`, 0.25) per metric:
     the bound alone is vacuous for 2 towers (any split has imbalance <= 2), and maximising
     kept affinity alone favours lopsided towers.
  4. Candidates: (a) the balanced placement; (b) Louvain communities of the graph
     (networkx, seeded), merged (most-affine pair that fits) or split (least-attached unit
     of the heaviest part) to T parts, repaired into the limits by violation-reducing unit
     moves/swaps (dropped if that fails). Each candidate is improved by best-improvement
     local search over unit moves and pairwise swaps that keep the limits; the candidate
     keeping the most affinity wins (ties: the balanced one). Deterministic for a seed.
     Steps are scored with numpy (search.Assignment): 1,000 units plan in seconds; above
     2,000 units swaps are scored within a pool of the best movers, so 10,000 units fit in
     memory (every pair of units is an 800 MB array per step there).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from dmt_fx.compiler.affinity import interaction_matrix
from dmt_fx.compiler.partitioners.base import PartitionRequest, register_partitioner
from dmt_fx.compiler.partitioners.search import GAIN, TOL, Assignment, groups_of, tower_of
from dmt_fx.compiler.partitioners.units import (
    balance_bound,
    balanced_placement,
    imbalances,
    table_units,
    unit_features,
    unit_shares,
)
from dmt_fx.compiler.plans import build_plan, tower_count
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.plan import TowerPlan
from dmt_fx.ir.sites import ModelSites
from dmt_fx.ir.topology import Topology


def _unit_weights(units: list[list[str]], names: list[str], matrix: np.ndarray) -> np.ndarray:
    """Units x units: the summed affinity of their features (zero diagonal). Rows, then
    columns, are summed by unit with index_add (a dense membership product is F^3 work)."""
    index = {f: i for i, f in enumerate(names)}
    pairs = [(u, index[f]) for u, unit in enumerate(units) for f in unit if f in index]
    unit_of = torch.tensor([u for u, _ in pairs], dtype=torch.long)
    feature = torch.tensor([i for _, i in pairs], dtype=torch.long)
    full = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float64))
    rows = torch.zeros(len(units), full.shape[1], dtype=torch.float64).index_add_(0, unit_of, full[feature])
    w = torch.zeros(len(units), len(units), dtype=torch.float64).index_add_(1, unit_of, rows[:, feature])
    w.fill_diagonal_(0.0)
    return w.numpy()


def _as_matrix(names: list[str], affinity: Mapping[tuple[str, str], float]) -> np.ndarray:
    index = {f: i for i, f in enumerate(names)}
    matrix = np.zeros((len(names), len(names)))
    for (a, b), value in affinity.items():
        if a in index and b in index and a != b:
            matrix[index[a], index[b]] = value
    return matrix


Loads = list[float]
Limits = tuple[float, float]


def _merge_to(parts: list[list[int]], num_towers: int, cost: Loads, mem: Loads, weights: np.ndarray,
              limits: Limits) -> None:
    """Merge the most affine pair of parts that fits the limits (else the lightest pair) until T remain."""
    if len(parts) <= num_towers:
        return
    member = np.zeros((len(parts), len(weights)))
    for i, p in enumerate(parts):
        member[i, p] = 1.0
    between = (member @ weights) @ member.T  # parts x parts, kept up to date as parts merge
    loads = [_load(p, cost, mem) for p in parts]
    while len(parts) > num_towers:
        best = None
        for i in range(len(parts)):
            for j in range(i + 1, len(parts)):
                c, m = loads[i][0] + loads[j][0], loads[i][1] + loads[j][1]
                fits = num_towers * c <= limits[0] + TOL and num_towers * m <= limits[1] + TOL
                key = (fits, float(between[i, j]), -max(c, m))
                if best is None or key > best[0]:
                    best = (key, i, j)
        _, i, j = best
        parts[i] = sorted(parts[i] + parts.pop(j))
        loads[i] = _load(parts[i], cost, mem)
        loads.pop(j)
        between[i] += between[j]
        between[:, i] += between[:, j]
        between = np.delete(np.delete(between, j, axis=0), j, axis=1)


def _split_to(parts: list[list[int]], num_towers: int, cost: Loads, mem: Loads, weights: np.ndarray) -> None:
    """Move the least attached unit of the heaviest part to a part of its own until T exist."""
    while len(parts) < num_towers:
        splittable = [p for p in parts if len(p) > 1]
        heaviest = max(splittable, key=lambda p: max(_load(p, cost, mem)))  # first of equals
        attached = weights[np.ix_(heaviest, heaviest)].sum(axis=1)
        loner = min(range(len(heaviest)), key=lambda k: (float(attached[k]), -max(cost[heaviest[k]], mem[heaviest[k]]),
                                                         heaviest[k]))
        parts.append([heaviest.pop(loner)])


def _load(part: list[int], cost: Loads, mem: Loads) -> tuple[float, float]:
    return sum(cost[u] for u in part), sum(mem[u] for u in part)


SPARSE_ABOVE, NEIGHBOURS = 64, 16  # Louvain on each unit's 16 strongest edges above 64 units


def _edges(weights: np.ndarray) -> list[tuple[int, int, float]]:
    """The graph's edges: every positive pair, or above SPARSE_ABOVE units the NEIGHBOURS strongest
    of each unit (the sampled affinity's noise floor would make the graph dense and Louvain slow)."""
    n = len(weights)
    keep = weights > 0
    if n > SPARSE_ABOVE:
        top = np.argsort(-weights, axis=1, kind="stable")[:, :NEIGHBOURS]
        near = np.zeros_like(keep)
        near[np.arange(n)[:, None], top] = True
        keep &= near | near.T
    us, vs = np.nonzero(np.triu(keep, k=1))
    return [(int(u), int(v), float(weights[u, v])) for u, v in zip(us, vs)]


def _louvain_parts(weights: np.ndarray, num_towers: int, cost: Loads, mem: Loads, limits: Limits,
                   seed: int) -> list[list[int]]:
    """Step 4b: seeded Louvain communities of the affinity graph, merged or split to T parts."""
    import networkx as nx  # not a cycle: only this partitioner needs networkx (import cost)

    graph = nx.Graph()
    graph.add_nodes_from(range(len(weights)))
    graph.add_weighted_edges_from(_edges(weights))
    communities = nx.community.louvain_communities(graph, weight="weight", seed=seed)
    parts = sorted((sorted(c) for c in communities), key=lambda p: p[0])
    _merge_to(parts, num_towers, cost, mem, weights, limits)
    _split_to(parts, num_towers, cost, mem, weights)
    return parts


def _affinity(sites: ModelSites, model: Any, example_inputs: Sequence[Any] | None,
              progress: bool | None) -> np.ndarray:
    if example_inputs is None or model is None:
        missing = "example_inputs" if example_inputs is None else "a model"
        raise DMTError(f"partitioner='learned' without {missing}",
                       "the learned partitioner needs example_inputs: one batch to measure how features interact",
                       ["pass example_inputs=(...) (one batch the model accepts)",
                        "or use partitioner='balanced', which needs no inputs"])
    # unclipped: clipping the noise at 0 adds a floor to every pair, and the kept affinity then
    # favours lopsided towers (sum of n_t^2 grows); the unbiased noise sums to ~0 instead
    _, matrix = interaction_matrix(model, sites, example_inputs, progress=progress, clip=False)
    return matrix.numpy()


def _best_of(candidates: list[list[int]], num_towers: int, cost: Loads, mem: Loads, weights: np.ndarray,
             limits: Limits) -> Assignment:
    """Step 4: repair and improve each candidate; the one keeping the most affinity (first of equals)."""
    budget = 8 * len(weights) * max(num_towers, 2) + 16
    best = None
    for where in candidates:
        state = Assignment(where, num_towers, cost, mem, weights, limits)
        if not state.repair(budget):
            continue
        state.improve(budget)
        if best is None or state.kept() > best.kept() + GAIN:
            best = state
    assert best is not None, "the balanced candidate always fits its own limits"
    return best


DEFAULT_BALANCE_SLACK = 0.25


def learned_plan(sites: ModelSites, topology: Topology, pooling: Mapping[str, float], *,
                 model: Any, example_inputs: Sequence[Any] | None, seed: int = 0,
                 balance_slack: float | None = DEFAULT_BALANCE_SLACK,
                 affinity: Mapping[tuple[str, str], float] | None = None,
                 progress: bool | None = None, towers_per_domain: int = 1) -> TowerPlan:
    """Towers of strongly interacting features (interaction affinity), within the balance limits.

    `affinity` (optional) replaces the one computed from `model` on `example_inputs`;
    `balance_slack=None` allows the whole balanced bound (see the module docstring);
    `progress`: the affinity's progress bar (None: only when stderr is a terminal)."""
    names = [f.name for f in sites.features]
    if affinity is None:
        matrix = _affinity(sites, model, example_inputs, progress)
    else:
        matrix = _as_matrix(names, affinity)
    # Steps 1-3
    units = table_units(sites)
    num_towers = tower_count(topology, len(units), towers_per_domain)
    cost, mem = unit_shares(units, sites, pooling)
    bound = balance_bound(num_towers, cost, mem)
    seed_parts = balanced_placement(cost, mem, num_towers)
    limits = (bound, bound)
    if balance_slack is not None:
        lookup, memory = imbalances(seed_parts, cost, mem, num_towers)
        limits = (min(bound, lookup + balance_slack), min(bound, memory + balance_slack))
    weights = _unit_weights(units, names, matrix)
    # Step 4
    candidates = [tower_of(seed_parts, len(units))]
    if num_towers > 1:
        candidates.append(tower_of(_louvain_parts(weights, num_towers, cost, mem, limits, seed), len(units)))
    best = _best_of(candidates, num_towers, cost, mem, weights, limits)
    placed = [p for p in groups_of(best.tower_of, num_towers) if p]
    placed.sort(key=lambda p: p[0])  # towers in model order of their first table
    return build_plan(unit_features(units, placed), sites, topology, pooling, partitioner="learned",
                      balance_bound=bound, towers_per_domain=towers_per_domain)


def learned(request: PartitionRequest) -> TowerPlan:
    return learned_plan(request.sites, request.topology, request.pooling, model=request.model,
                        example_inputs=request.example_inputs, seed=request.seed,
                        towers_per_domain=request.towers_per_domain)


register_partitioner("learned", learned)
