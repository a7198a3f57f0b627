"""Runs a list of named passes: timing, node-count diffs, lint, and errors named by pass."""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

import torch.fx as fx

from dmt_fx.ir.errors import DMTError, PassError
from dmt_fx.ir.result import PassRecord

log = logging.getLogger("dmt_fx.passes")
Pass = Callable[[fx.GraphModule], fx.GraphModule]


def run_passes(gm: fx.GraphModule, passes: Sequence[tuple[str, Pass, bool]],
               *, disabled: Sequence[str] = ()) -> list[PassRecord]:
    """`passes` holds (name, pass with its config bound, changes_model)."""
    records = []
    for number, (name, run, changes_model) in enumerate(passes, 1):
        if name in disabled:
            log.info("pass %d/%d %s: disabled", number, len(passes), name)
            continue
        before, start = len(gm.graph.nodes), time.perf_counter()
        try:
            result = run(gm)
            assert isinstance(result, fx.GraphModule), f"pass {name} returned {type(result).__name__}"
            gm.graph.lint()
            gm.recompile()
        except DMTError:
            raise
        except Exception as exc:
            raise PassError(f"pass {name!r} failed: {type(exc).__name__}: {exc}",
                            "every pass to rewrite the captured graph",
                            ["please report this with the model that triggers it",
                             f"disable the pass to inspect the graph: transform(..., disable_passes=[{name!r}])"],
                            ) from exc
        record = PassRecord(name, time.perf_counter() - start, before, len(gm.graph.nodes), changes_model)
        log.info("pass %d/%d %s", number, len(passes), record)
        records.append(record)
    return records
