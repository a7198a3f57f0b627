"""Every registered tower-module kind on every corpus model: success or a DMTError, never a
raw exception from inside torch, and never a refusal that only wraps one.

For each (model, kind) with compression 2: `transform`, then a forward and backward of the
DMT model and `check_distributable` (the checks `distribute` runs before any process group
exists). A refusal must give its own reason: a `PassError` ("pass ... failed: RuntimeError")
is a crash the pass did not understand, and fails this test like a raw exception.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils import _pytree as pytree

import dmt_fx
from dmt_fx.compiler.tower_modules import TOWER_MODULES
from dmt_fx.ir.errors import DMTError, PassError
from dmt_fx.runtime.distribute import check_distributable
from tests.corpus import CORPUS

COMPRESSING = sorted(name for name, kind in TOWER_MODULES.items() if kind.changes_model)


def _outcome(entry, kind: str) -> str:
    model, inputs = entry.build(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            gm = dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module=kind, compression=2)
        except PassError:
            raise
        except DMTError as error:
            return f"refused: {error.found}"
        out = [x for x in pytree.tree_leaves(gm(*inputs)) if isinstance(x, torch.Tensor) and x.requires_grad]
        sum(x.float().sum() for x in out).backward()
        try:
            check_distributable(gm)
        except DMTError as error:
            return f"transforms; distribute refuses: {error.found}"
    return "transforms and trains"


@pytest.mark.parametrize("kind", COMPRESSING)
@pytest.mark.parametrize("entry", CORPUS, ids=[e.name for e in CORPUS])
def test_tower_module_kind_succeeds_or_refuses_clearly(entry, kind: str) -> None:
    outcome = _outcome(entry, kind)
    assert outcome, "no outcome"
    print(f"{entry.name} / {kind}: {outcome[:160]}")


def test_some_corpus_models_compress() -> None:
    """The sweep is not vacuous: the plain concat / dot models compress with every kind."""
    plain = [e for e in CORPUS if e.style in ("torchrec DLRM", "dict batch")] or list(CORPUS[:3])
    outcomes = [_outcome(e, kind) for e in plain[:2] for kind in COMPRESSING]
    assert any(o == "transforms and trains" for o in outcomes), outcomes
