"""Every corpus entry as a CLI TARGET: `dmt-fx plan tests.harness.corpus.targets:<slug> ...`.

`slug(entry.name)` is the factory's name (a Python identifier); the factory takes no
arguments, as TARGET factories do, and builds the entry with seed 0."""

from __future__ import annotations

import re
from typing import Any, Callable

from tests.harness.corpus import CORPUS


def slug(name: str) -> str:
    return re.sub(r"\W+", "_", name).strip("_")


_FACTORIES = {slug(e.name): e.build for e in CORPUS}


def __getattr__(name: str) -> Callable[[], tuple[Any, ...]]:
    if name not in _FACTORIES:
        raise AttributeError(name)
    return lambda: _FACTORIES[name](0)
