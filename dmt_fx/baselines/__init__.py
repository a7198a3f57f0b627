"""The TorchRec plans a user would pick instead of DMT, one registry (`BASELINES`).

One file per baseline family (`flat.py`: DMP table-wise / row-wise / table-row-wise;
`towers.py`: TorchRec's EmbeddingTowerCollection), each registering through
`register_baseline`. Every module of this package is imported here, so a new file is a
new baseline: nothing else to edit.
"""

from __future__ import annotations

import importlib
import pkgutil

from dmt_fx.baselines.registry import BASELINES, Baseline, baseline_names, build_baseline, register_baseline

__all__ = ["BASELINES", "Baseline", "baseline_names", "build_baseline", "register_baseline"]

for _module in pkgutil.iter_modules(__path__):  # sorted by file name: the registration order
    importlib.import_module(f"{__name__}.{_module.name}")
