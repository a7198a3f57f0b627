"""Local search over unit placements within balance limits (the learned and random partitioners).

An `Assignment` keeps units on towers with incremental loads and each unit's affinity to
every tower, so a move or a swap is scored in O(1): `repair` takes violation-reducing steps
until every tower fits the limits, `improve` takes best-improvement steps that keep them.
"""

from __future__ import annotations

from typing import Iterator, Sequence

Step = tuple[int, int | None, int | None]  # (u, None, b): move u to b; (u, v, None): swap u and v

TOL = 1e-9  # feasibility tolerance on T x share (imbalances are reported rounded to 4 places)
GAIN = 1e-9  # the least affinity gain a local-search step must make


def tower_of(parts: list[list[int]], n: int) -> list[int]:
    """The tower index of each of n units, from the units of each tower."""
    where = [0] * n
    for t, p in enumerate(parts):
        for u in p:
            where[u] = t
    return where


def groups_of(where: list[int], num_towers: int) -> list[list[int]]:
    """The units of each tower, from each unit's tower index."""
    placed: list[list[int]] = [[] for _ in range(num_towers)]
    for u, t in enumerate(where):
        placed[t].append(u)
    return placed


class Assignment:
    """Units on towers with incremental loads and per-unit affinity to every tower."""

    def __init__(self, tower_of: list[int], num_towers: int, cost: list[float], mem: list[float],
                 weights: list[list[float]], limits: tuple[float, float]) -> None:
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
    def excess(self, load: Sequence[float]) -> float:
        return sum(max(0.0, self.T * load[k] - self.limits[k] - TOL) for k in (0, 1))

    def violation(self) -> float:
        return sum(self.excess(load) for load in self.loads)

    def kept(self) -> float:
        return sum(self.to_tower[u][t] for u, t in enumerate(self.tower_of)) / 2.0

    def _shift(self, load: Sequence[float], out_unit: int | None, in_unit: int | None) -> tuple[float, float]:
        c, m = load
        if out_unit is not None:
            c, m = c - self.shares[out_unit][0], m - self.shares[out_unit][1]
        if in_unit is not None:
            c, m = c + self.shares[in_unit][0], m + self.shares[in_unit][1]
        return (c, m)

    def steps(self) -> Iterator[tuple[float, float, Step]]:
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

    def apply(self, step: Step) -> None:
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
                if delta < -TOL and (best is None or (delta, -gain) < (best[0], -best[1])):
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
                if gain > GAIN and delta <= 0.0 and (best is None or gain > best[0]):
                    # delta <= 0 from a feasible state means both changed towers still fit
                    best = (gain, step)
            if best is None:
                return
            self.apply(best[1])
