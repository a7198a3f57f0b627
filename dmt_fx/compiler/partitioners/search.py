"""Local search over unit placements within balance limits (the learned and random partitioners).

An `Assignment` keeps units on towers with incremental loads and each unit's affinity to
every tower, so a move or a swap is scored in O(1): `repair` takes violation-reducing steps
until every tower fits the limits, `improve` takes best-improvement steps that keep them.
Above SWAP_POOL_ABOVE units a step scores swaps only within a pool of about SWAP_POOL units,
the best movers between each pair of towers (every pair is n^2 work and memory a step: 800 MB
arrays at 10,000 units); up to there every pair is scored.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

Step = tuple[int, int | None, int | None]  # (u, None, b): move u to b; (u, v, None): swap u and v

TOL = 1e-9  # feasibility tolerance on T x share (imbalances are reported rounded to 4 places)
GAIN = 1e-9  # the least affinity gain a local-search step must make
SWAP_POOL_ABOVE, SWAP_POOL = 2000, 256


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
    """Units on towers with incremental loads and per-unit affinity to every tower (numpy: a
    step scores every move and swap in a few array operations, so 1,000 units stay fast)."""

    def __init__(self, tower_of: Sequence[int], num_towers: int, cost: Sequence[float], mem: Sequence[float],
                 weights: Sequence[Sequence[float]] | np.ndarray, limits: tuple[float, float]) -> None:
        self.where = np.asarray(tower_of, dtype=np.int64).copy()
        self.T = num_towers
        self.share = np.stack([np.asarray(cost, dtype=np.float64), np.asarray(mem, dtype=np.float64)], axis=1)
        n = len(self.where)
        self.w = np.array(weights, dtype=np.float64).reshape(n, n)
        np.fill_diagonal(self.w, 0.0)  # a unit's affinity to itself never counts
        self.limits = np.asarray(limits, dtype=np.float64)
        onehot = np.zeros((n, num_towers))
        onehot[np.arange(n), self.where] = 1.0
        self.loads = onehot.T @ self.share  # (T, 2)
        self.counts = np.bincount(self.where, minlength=num_towers)
        self.to_tower = self.w @ onehot  # (n, T): each unit's affinity to each tower
        self.pool = np.arange(n)  # the units whose swaps the last steps() scored

    @property
    def tower_of(self) -> list[int]:
        return [int(t) for t in self.where]

    # loads (..., 2) -> how far a tower is over the limits (0 when it fits)
    def excess(self, load: np.ndarray) -> np.ndarray:
        return np.maximum(0.0, self.T * np.asarray(load) - self.limits - TOL).sum(axis=-1)

    def violation(self) -> float:
        return float(self.excess(self.loads).sum())

    def kept(self) -> float:
        return float(self.to_tower[np.arange(len(self.where)), self.where].sum() / 2.0)

    def steps(self) -> tuple[np.ndarray, np.ndarray]:
        """(gain, excess change) of every step, flat: moves (u, b) u-major, then swaps of the
        swap pool's units (i, j), i < j; steps that are not allowed get gain -inf and change +inf."""
        n, T, a = len(self.where), self.T, self.where
        own = self.to_tower[np.arange(n), a]
        base = self.excess(self.loads)  # (T,)
        # moves u -> b
        move_gain = self.to_tower - own[:, None]
        new_a = self.excess(self.loads[a] - self.share)  # (n,)
        new_b = self.excess(self.loads[None, :, :] + self.share[:, None, :])  # (n, T)
        move_delta = new_a[:, None] + new_b - base[a][:, None] - base[None, :]
        bad = (np.arange(T)[None, :] == a[:, None]) | (self.counts[a] == 1)[:, None]
        self.pool = self._swap_pool(np.where(bad, -np.inf, move_gain))
        swap_gain, swap_delta, swap_bad = self._swaps(self.pool, own, base)
        gain = np.concatenate([np.where(bad, -np.inf, move_gain).ravel(), np.where(swap_bad, -np.inf, swap_gain).ravel()])
        delta = np.concatenate([np.where(bad, np.inf, move_delta).ravel(), np.where(swap_bad, np.inf, swap_delta).ravel()])
        return gain, delta

    def _swap_pool(self, move_gain: np.ndarray) -> np.ndarray:
        """Every unit, or above SWAP_POOL_ABOVE the best few by move gain of each (from, to) tower
        pair (a good swap pairs a's best mover to b with b's best mover to a), ascending."""
        n, T = move_gain.shape
        if n <= SWAP_POOL_ABOVE:
            return np.arange(n)
        k = max(1, SWAP_POOL // (T * (T - 1)))
        picked = []
        for a in range(T):
            members = np.flatnonzero(self.where == a)
            for b in range(T):
                if b != a and len(members):
                    gains = move_gain[members, b]
                    picked.append(members[np.argsort(-gains, kind="stable")[:k]])
        pool = np.unique(np.concatenate(picked)) if picked else np.arange(0)
        if len(pool) > 4 * SWAP_POOL:  # many towers: the units with the best moves of all
            best = np.where(np.isfinite(move_gain), move_gain, -np.inf).max(axis=1)[pool]
            pool = np.sort(pool[np.argsort(-best, kind="stable")[:4 * SWAP_POOL]])
        return pool

    def _swaps(self, pool: np.ndarray, own: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, ...]:
        """Swaps u <-> v of the pool's units: (gain, excess change, not allowed), each (m, m)."""
        a = self.where[pool]
        first = self.to_tower[np.ix_(pool, a)] - own[pool][:, None]  # [u, v]: to_tower[u, b] - to_tower[u, a]
        gain = first + first.T - 2.0 * self.w[np.ix_(pool, pool)]
        load, share = self.loads[a], self.share[pool]  # (m, 2)
        diff = share[None, :, :] - share[:, None, :]  # [u, v] = s_v - s_u
        delta = (self.excess(load[:, None, :] + diff) + self.excess(load[None, :, :] - diff)
                 - base[a][:, None] - base[a][None, :])
        bad = (a[:, None] == a[None, :]) | ~np.triu(np.ones((len(pool), len(pool)), dtype=bool), k=1)
        return gain, delta, bad

    def step_at(self, k: int) -> Step:
        n, T, m = len(self.where), self.T, len(self.pool)
        if k < n * T:
            return (k // T, None, k % T)
        i, j = divmod(k - n * T, m)
        return (int(self.pool[i]), int(self.pool[j]), None)

    def move(self, u: int, b: int) -> None:
        a = int(self.where[u])
        self.where[u] = b
        self.loads[a] -= self.share[u]
        self.loads[b] += self.share[u]
        self.counts[a] -= 1
        self.counts[b] += 1
        self.to_tower[:, a] -= self.w[:, u]
        self.to_tower[:, b] += self.w[:, u]

    def apply(self, step: Step) -> None:
        u, v, b = step
        if v is None:
            self.move(u, b)
        else:
            a, b = int(self.where[u]), int(self.where[v])
            self.move(u, b)
            self.move(v, a)

    def repair(self, max_steps: int) -> bool:
        """Violation-reducing steps (most reduction first, then most affinity) until feasible."""
        for _ in range(max_steps):
            if self.violation() <= 0.0:
                return True
            gain, delta = self.steps()
            ok = delta < -TOL
            if not ok.any():
                return False
            ok &= delta == delta[ok].min()
            self.apply(self.step_at(int(np.argmax(np.where(ok, gain, -np.inf)))))
        return self.violation() <= 0.0

    def improve(self, max_steps: int) -> None:
        """Best-improvement local search over moves and swaps that keep every tower in the limits."""
        for _ in range(max_steps):
            gain, delta = self.steps()
            # delta <= 0 from a feasible state means both changed towers still fit
            ok = (gain > GAIN) & (delta <= 0.0)
            if not ok.any():
                return
            self.apply(self.step_at(int(np.argmax(np.where(ok, gain, -np.inf)))))
