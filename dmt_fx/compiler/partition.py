"""Balanced Tower Partitioner: the default plan (policy only, no graph code).

Algorithm:
  1. Units are tables with every feature that shares them (a table never spans towers).
  2. Each unit has a lookup cost (pooling factor x dim x 4 bytes per sample) and a memory
     (rows x dim x dtype size), both taken as shares of the model's totals.
  3. Greedy, largest unit first: put the unit on the tower whose current load
     max(cost share, memory share) is smallest (ties: lowest index).
  4. Report the achieved imbalances (max / mean per metric) and the bound the greedy
     guarantees: when a unit is placed its tower has max-share <= 2/T (the sum over towers of
     max(c, m) is at most 2), so every metric's max load <= 2 x mean + the largest unit,
     i.e. imbalance <= 2 + T x (largest unit share). Achieved values are usually near 1.

Learned Tower Partitioner (`learned_plan`, partitioner "learned"):
  1. Same units, shares, T = min(hosts, units) and bound as above.
  2. Affinity: how strongly the trained model combines two features non-additively, measured
     on example_inputs by swapping their pooled embeddings with another sample's
     (dmt_fx.compiler.affinity.interaction_affinity). A networkx graph has the units as nodes, edges
     weighted by the summed affinity of their features.
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

Random partitioner (`random_plan`, partitioner "random"): units shuffled with
random.Random(seed), dealt round-robin, then repaired into the bound by violation-reducing
moves/swaps (fallback: greedy placement in the shuffled order, which meets the bound by the
argument above). A baseline for measuring the other two.
"""

from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

from dmt_fx.compiler.plans import build_plan
from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.plan import TowerPlan
from dmt_fx.ir.sites import ModelSites
from dmt_fx.ir.topology import Topology


def table_units(sites: ModelSites) -> list[list[str]]:
    """Step 1: features grouped by table, in model order."""
    units: dict[str, list[str]] = {}
    for f in sites.features:
        units.setdefault(f.table, []).append(f.name)
    return list(units.values())


def _unit_shares(units, sites, pooling):
    costs = [sum(pooling.get(f, 1.0) * sites.feature(f).dim for f in u) for u in units]
    mems = [sites.table(sites.feature(u[0]).table).memory_bytes for u in units]
    total_c, total_m = sum(costs) or 1.0, sum(mems) or 1.0
    return [c / total_c for c in costs], [m / total_m for m in mems]


def balance_bound(num_towers: int, cost_shares: list[float], mem_shares: list[float]) -> float:
    largest = max(max(cost_shares, default=0.0), max(mem_shares, default=0.0))
    return round(2.0 + num_towers * largest, 4)


def _greedy_placement(order: list[int], cost: list[float], mem: list[float], num_towers: int) -> list[list[int]]:
    """Units in `order`, each onto the tower whose max(cost share, memory share) is smallest."""
    loads = [[0.0, 0.0] for _ in range(num_towers)]
    placed: list[list[int]] = [[] for _ in range(num_towers)]
    for i in order:
        tower = min(range(num_towers), key=lambda t: (max(loads[t]), t))
        loads[tower][0] += cost[i]
        loads[tower][1] += mem[i]
        placed[tower].append(i)
    return placed


def _balanced_placement(cost: list[float], mem: list[float], num_towers: int) -> list[list[int]]:
    order = sorted(range(len(cost)), key=lambda i: (-max(cost[i], mem[i]), i))
    return _greedy_placement(order, cost, mem, num_towers)


def balanced_groups(units: list[list[str]], cost: list[float], mem: list[float], num_towers: int) -> list[list[str]]:
    """Step 3: greedy min-max placement, largest unit first (stable order)."""
    placed = _balanced_placement(cost, mem, num_towers)
    # Keep model order inside a tower so graphs and plans read naturally.
    return [[f for i in sorted(p) for f in units[i]] for p in placed]


def balanced_plan(sites: ModelSites, topology: Topology, pooling: Mapping[str, float]) -> TowerPlan:
    units = table_units(sites)
    num_towers = min(topology.num_hosts, len(units))
    cost, mem = _unit_shares(units, sites, pooling)
    groups = balanced_groups(units, cost, mem, num_towers)
    return build_plan(groups, sites, topology, pooling, partitioner="balanced",
                      balance_bound=balance_bound(num_towers, cost, mem))


# ---------------------------------------------------------------- learned and random partitioners

PARTITIONERS = ("balanced", "learned", "random")
_TOL = 1e-9  # feasibility tolerance on T x share (imbalances are reported rounded to 4 places)
_GAIN = 1e-9  # the least affinity gain a local-search step must make


class _Assignment:
    """Units on towers with incremental loads and per-unit affinity to every tower."""

    def __init__(self, tower_of: list[int], num_towers: int, cost, mem, weights, limits) -> None:
        self.tower_of = list(tower_of)
        self.T = num_towers
        self.shares = list(zip(cost, mem))
        self.w = weights
        self.limits = limits
        self.loads = [[0.0, 0.0] for _ in range(num_towers)]
        self.counts = [0] * num_towers
        n = len(tower_of)
        self.to_tower = [[0.0] * num_towers for _ in range(n)]
        for u, t in enumerate(tower_of):
            self.loads[t][0] += cost[u]
            self.loads[t][1] += mem[u]
            self.counts[t] += 1
        for u in range(n):
            for v in range(n):
                if u != v:
                    self.to_tower[u][tower_of[v]] += weights[u][v]

    # loads -> how far a tower is over the limits (0 when it fits)
    def excess(self, load) -> float:
        return sum(max(0.0, self.T * load[k] - self.limits[k] - _TOL) for k in (0, 1))

    def violation(self) -> float:
        return sum(self.excess(load) for load in self.loads)

    def kept(self) -> float:
        return sum(self.to_tower[u][t] for u, t in enumerate(self.tower_of)) / 2.0

    def _shift(self, load, out_unit, in_unit):
        c, m = load
        if out_unit is not None:
            c, m = c - self.shares[out_unit][0], m - self.shares[out_unit][1]
        if in_unit is not None:
            c, m = c + self.shares[in_unit][0], m + self.shares[in_unit][1]
        return (c, m)

    def steps(self):
        """Every move (u, None, b) and swap (u, v, None): (gain, excess change, step)."""
        n = len(self.tower_of)
        for u in range(n):
            a = self.tower_of[u]
            if self.counts[a] == 1:
                continue
            for b in range(self.T):
                if b != a:
                    gain = self.to_tower[u][b] - self.to_tower[u][a]
                    new_a, new_b = self._shift(self.loads[a], u, None), self._shift(self.loads[b], None, u)
                    delta = (self.excess(new_a) + self.excess(new_b)
                             - self.excess(self.loads[a]) - self.excess(self.loads[b]))
                    yield gain, delta, (u, None, b)
        for u in range(n):
            for v in range(u + 1, n):
                a, b = self.tower_of[u], self.tower_of[v]
                if a == b:
                    continue
                gain = (self.to_tower[u][b] - self.to_tower[u][a] + self.to_tower[v][a]
                        - self.to_tower[v][b] - 2.0 * self.w[u][v])
                new_a, new_b = self._shift(self.loads[a], u, v), self._shift(self.loads[b], v, u)
                delta = (self.excess(new_a) + self.excess(new_b)
                         - self.excess(self.loads[a]) - self.excess(self.loads[b]))
                yield gain, delta, (u, v, None)

    def move(self, u: int, b: int) -> None:
        a = self.tower_of[u]
        self.tower_of[u] = b
        for k in (0, 1):
            self.loads[a][k] -= self.shares[u][k]
            self.loads[b][k] += self.shares[u][k]
        self.counts[a] -= 1
        self.counts[b] += 1
        for w, row in enumerate(self.w):
            if w != u:
                self.to_tower[w][a] -= row[u]
                self.to_tower[w][b] += row[u]

    def apply(self, step) -> None:
        u, v, b = step
        if v is None:
            self.move(u, b)
        else:
            a, b = self.tower_of[u], self.tower_of[v]
            self.move(u, b)
            self.move(v, a)

    def repair(self, max_steps: int) -> bool:
        """Violation-reducing steps (most reduction first, then most affinity) until feasible."""
        for _ in range(max_steps):
            if self.violation() <= 0.0:
                return True
            best = None
            for gain, delta, step in self.steps():
                if delta < -_TOL and (best is None or (delta, -gain) < (best[0], -best[1])):
                    best = (delta, gain, step)
            if best is None:
                return False
            self.apply(best[2])
        return self.violation() <= 0.0

    def improve(self, max_steps: int) -> None:
        """Best-improvement local search over moves and swaps that keep every tower in the limits."""
        for _ in range(max_steps):
            best = None
            for gain, delta, step in self.steps():
                if gain > _GAIN and delta <= 0.0 and (best is None or gain > best[0]):
                    # delta <= 0 from a feasible state means both changed towers still fit
                    best = (gain, step)
            if best is None:
                return
            self.apply(best[1])


def _unit_weights(units: list[list[str]], affinity: Mapping[tuple[str, str], float]) -> list[list[float]]:
    n = len(units)
    w = [[0.0] * n for _ in range(n)]
    for u in range(n):
        for v in range(u + 1, n):
            total = sum(affinity.get((f, g), 0.0) for f in units[u] for g in units[v])
            w[u][v] = w[v][u] = total
    return w


def _to_parts(communities: list[list[int]], num_towers: int, cost, mem, weights, limits) -> list[list[int]]:
    """Merge (the most affine pair that fits, else the lightest pair) or split communities to T parts."""
    parts = sorted((sorted(c) for c in communities), key=lambda p: p[0])
    load = lambda p: (sum(cost[u] for u in p), sum(mem[u] for u in p))  # noqa: E731
    while len(parts) > num_towers:
        best = None
        for i in range(len(parts)):
            for j in range(i + 1, len(parts)):
                c, m = load(parts[i] + parts[j])
                fits = num_towers * c <= limits[0] + _TOL and num_towers * m <= limits[1] + _TOL
                inter = sum(weights[u][v] for u in parts[i] for v in parts[j])
                key = (fits, inter, -max(c, m))
                if best is None or key > best[0]:
                    best = (key, i, j)
        _, i, j = best
        parts[i] = sorted(parts[i] + parts.pop(j))
    while len(parts) < num_towers:
        splittable = [p for p in parts if len(p) > 1]
        heaviest = max(splittable, key=lambda p: max(load(p)))  # first of equals
        loner = min(heaviest, key=lambda u: (sum(weights[u][v] for v in heaviest if v != u),
                                             -max(cost[u], mem[u]), u))
        heaviest.remove(loner)
        parts.append([loner])
    return parts


def _tower_of(parts: list[list[int]], n: int) -> list[int]:
    tower_of = [0] * n
    for t, p in enumerate(parts):
        for u in p:
            tower_of[u] = t
    return tower_of


def _groups(tower_of: list[int], num_towers: int) -> list[list[int]]:
    placed: list[list[int]] = [[] for _ in range(num_towers)]
    for u, t in enumerate(tower_of):
        placed[t].append(u)
    return placed


def _features(units: list[list[str]], placed: list[list[int]]) -> list[list[str]]:
    return [[f for i in sorted(p) for f in units[i]] for p in placed]


def _imbalances(placed: list[list[int]], cost, mem, num_towers: int) -> tuple[float, float]:
    return (num_towers * max(sum(cost[u] for u in p) for p in placed),
            num_towers * max(sum(mem[u] for u in p) for p in placed))


DEFAULT_BALANCE_SLACK = 0.25


def learned_plan(sites: ModelSites, topology: Topology, pooling: Mapping[str, float], *,
                 model: Any, example_inputs: Sequence[Any] | None, seed: int = 0,
                 balance_slack: float | None = DEFAULT_BALANCE_SLACK,
                 affinity: Mapping[tuple[str, str], float] | None = None) -> TowerPlan:
    """Towers of strongly interacting features (interaction affinity), within the balance limits.

    `affinity` (optional) replaces the one computed from `model` on `example_inputs`;
    `balance_slack=None` allows the whole balanced bound (see the module docstring)."""
    if affinity is None:
        if example_inputs is None or model is None:
            missing = "example_inputs" if example_inputs is None else "a model"
            raise DMTError(f"partitioner='learned' without {missing}",
                           "the learned partitioner needs example_inputs: one batch to measure how features interact",
                           ["pass example_inputs=(...) (one batch the model accepts)",
                            "or use partitioner='balanced', which needs no inputs"])
        from dmt_fx.compiler.affinity import interaction_affinity  # lazy: affinity imports transform
        affinity = interaction_affinity(model, sites, example_inputs)
    units = table_units(sites)
    num_towers = min(topology.num_hosts, len(units))
    cost, mem = _unit_shares(units, sites, pooling)
    bound = balance_bound(num_towers, cost, mem)
    seed_parts = _balanced_placement(cost, mem, num_towers)
    limits = (bound, bound)
    if balance_slack is not None:
        limits = tuple(min(bound, achieved + balance_slack)
                       for achieved in _imbalances(seed_parts, cost, mem, num_towers))
    weights = _unit_weights(units, affinity)
    n = len(units)
    budget = 8 * n * max(num_towers, 2) + 16

    candidates = [_tower_of(seed_parts, n)]
    if num_towers > 1:
        import networkx as nx  # lazy: only the learned partitioner needs it

        graph = nx.Graph()
        graph.add_nodes_from(range(n))
        graph.add_weighted_edges_from((u, v, weights[u][v]) for u in range(n) for v in range(u + 1, n)
                                      if weights[u][v] > 0)
        communities = [sorted(c) for c in nx.community.louvain_communities(graph, weight="weight", seed=seed)]
        candidates.append(_tower_of(_to_parts(communities, num_towers, cost, mem, weights, limits), n))

    best = None
    for tower_of in candidates:
        state = _Assignment(tower_of, num_towers, cost, mem, weights, limits)
        if not state.repair(budget):
            continue
        state.improve(budget)
        if best is None or state.kept() > best.kept() + _GAIN:
            best = state
    placed = [p for p in _groups(best.tower_of, num_towers) if p]
    placed.sort(key=lambda p: p[0])  # towers in model order of their first table
    return build_plan(_features(units, placed), sites, topology, pooling, partitioner="learned",
                      balance_bound=bound)


def random_plan(sites: ModelSites, topology: Topology, pooling: Mapping[str, float], *, seed: int = 0) -> TowerPlan:
    """A seeded random split into towers that still meets the balanced bound: a baseline."""
    units = table_units(sites)
    num_towers = min(topology.num_hosts, len(units))
    cost, mem = _unit_shares(units, sites, pooling)
    bound = balance_bound(num_towers, cost, mem)
    n = len(units)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    tower_of = [0] * n
    for k, u in enumerate(order):
        tower_of[u] = k % num_towers
    zeros = [[0.0] * n for _ in range(n)]
    state = _Assignment(tower_of, num_towers, cost, mem, zeros, (bound, bound))
    if state.repair(8 * n * max(num_towers, 2) + 16):
        placed = _groups(state.tower_of, num_towers)
    else:
        placed = _greedy_placement(order, cost, mem, num_towers)
    return build_plan(_features(units, placed), sites, topology, pooling, partitioner="random",
                      balance_bound=bound)


def make_partition(partitioner: str, sites: ModelSites, topology: Topology, pooling: Mapping[str, float], *,
                   model: Any = None, example_inputs: Sequence[Any] | None = None, seed: int = 0) -> TowerPlan:
    """The plan of the named partitioner: "balanced" | "learned" | "random"."""
    if partitioner == "balanced":
        return balanced_plan(sites, topology, pooling)
    if partitioner == "learned":
        return learned_plan(sites, topology, pooling, model=model, example_inputs=example_inputs, seed=seed)
    if partitioner == "random":
        return random_plan(sites, topology, pooling, seed=seed)
    raise DMTError(f"partitioner={partitioner!r}", f"one of {', '.join(repr(p) for p in PARTITIONERS)} or plan=...",
                   ["partitioner='balanced': balanced lookup cost and memory (the default)",
                    "partitioner='learned': towers of interacting features (needs example_inputs)",
                    "partitioner='random': a seeded random baseline",
                    "or pass your own plan (TowerPlan, dict or JSON)"])
