"""How much of a pairwise affinity a grouping keeps inside its towers (partitioners, auto plans)."""

from __future__ import annotations

from typing import Iterable, Mapping


def within_tower_affinity(groups: Iterable[Iterable[str]], affinity: Mapping[tuple[str, str], float]) -> float:
    """Share of the total pairwise affinity that stays inside towers (1.0 when there is none)."""
    tower = {f: t for t, g in enumerate(groups) for f in g}
    total = inside = 0.0
    for (a, b), value in affinity.items():
        if a < b and a in tower and b in tower:
            total += value
            inside += value if tower[a] == tower[b] else 0.0
    return inside / total if total > 0 else 1.0
