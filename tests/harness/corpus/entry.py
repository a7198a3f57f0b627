"""One corpus entry: a named model builder and the input style it exercises."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch.nn as nn

Build = Callable[[int], tuple[nn.Module, tuple[Any, ...]]]


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    style: str
    build: Build
    xfail: str | None = None  # a precise reason, when the entry is known to fail
    warns: str = ""  # a part of the plan warning the entry must give (e.g. why a joint table stays whole)
