"""Load every module of an extension-point package, so that adding a kind is one new file.

Each built-in kind is a module that registers itself (through the same public call users
make) when imported; a package's __init__ calls `import_all` once. Kind modules import their
registry from the package's base module, never from the package itself, so loading them
from the __init__ forms no cycle.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Iterable


def import_all(package: str, path: Iterable[str]) -> tuple[str, ...]:
    """Import the modules of `package` (its `__path__`) in name order; returns their names."""
    names = sorted(info.name for info in pkgutil.iter_modules(list(path)) if not info.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return tuple(names)
