"""The greedy placement (partitioners/units.py) through a heap: the same towers as the scan it
replaced (smallest max(cost, memory) share first, ties to the lowest index), in O(F log T)."""

from __future__ import annotations

import random

from dmt_fx.compiler.partitioners.units import balanced_placement, greedy_placement


def scan_placement(order: list[int], cost: list[float], mem: list[float], num_towers: int) -> list[list[int]]:
    """The original O(F x T) scan, kept here as the reference."""
    loads = [[0.0, 0.0] for _ in range(num_towers)]
    placed: list[list[int]] = [[] for _ in range(num_towers)]
    for i in order:
        tower = min(range(num_towers), key=lambda t: (max(loads[t]), t))
        loads[tower][0] += cost[i]
        loads[tower][1] += mem[i]
        placed[tower].append(i)
    return placed


def test_heap_places_like_the_scan() -> None:
    rng = random.Random(0)
    for trial in range(200):
        n, towers = rng.randint(0, 60), rng.randint(1, 9)
        # ties on purpose: a few distinct values, zeros included
        cost = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(n)]
        mem = [rng.choice([0.0, 0.25, rng.random()]) for _ in range(n)]
        order = list(range(n))
        rng.shuffle(order)
        assert greedy_placement(order, cost, mem, towers) == scan_placement(order, cost, mem, towers), trial


def test_thousands_of_units_on_many_towers() -> None:
    rng = random.Random(1)
    cost = [rng.random() for _ in range(3_000)]
    mem = [rng.random() for _ in range(3_000)]
    placed = balanced_placement(cost, mem, 64)
    assert sorted(i for p in placed for i in p) == list(range(3_000))
    order = sorted(range(3_000), key=lambda i: (-max(cost[i], mem[i]), i))
    assert placed == scan_placement(order, cost, mem, 64)
