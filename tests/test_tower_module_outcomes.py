"""Every registered tower-module kind on every corpus model: success or a DMTError, never a
raw exception from inside torch, and never a refusal that only wraps one.

For each (model, kind) with compression 2 ("linear" in CI, every kind under -m slow): `transform`, then a forward and backward of the
DMT model and `check_distributable` (the checks `distribute` runs before any process group
exists). A refusal must give its own reason: a `PassError` ("pass ... failed: RuntimeError")
is a crash the pass did not understand, and fails this test like a raw exception.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
from torch.utils import _pytree as pytree

import dmt_fx
from dmt_fx.compiler.tower_modules import TOWER_MODULES
from dmt_fx.ir.errors import DMTError, NoInteractionError, PassError
from dmt_fx.runtime.distribute import check_distributable
from tests.harness.corpus import CORPUS

COMPRESSING = sorted(name for name, kind in TOWER_MODULES.items() if kind.changes_model and not kind.sequences)


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


# CI drives "linear" over the corpus (each kind shares the interaction rewrite); -m slow all kinds
KINDS = [pytest.param(k, marks=() if k == "linear" else pytest.mark.slow) for k in COMPRESSING]


@pytest.mark.parametrize("kind", KINDS)
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


class WideAndDeep(nn.Module):
    """A linear (wide) part, an FM part and a deep MLP summed into the logit, with a dense input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.wide = nn.ModuleList(nn.Embedding(10, 1) for _ in range(3))
        self.deep = nn.ModuleList(nn.Embedding(10, 4) for _ in range(3))
        self.dense_linear = nn.Linear(5, 1)
        self.dnn = nn.Sequential(nn.Linear(12 + 5, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        wide = sum(t(ids[:, i]) for i, t in enumerate(self.wide)) + self.dense_linear(dense)
        emb = torch.stack([t(ids[:, i]) for i, t in enumerate(self.deep)], 1)
        fm = 0.5 * (emb.sum(1) ** 2 - (emb ** 2).sum(1)).sum(1, keepdim=True)
        return wide + fm + self.dnn(torch.cat([emb.flatten(1), dense], 1))


@pytest.mark.parametrize("kind", COMPRESSING)
def test_sum_of_parts_is_refused_naming_the_parts(kind: str) -> None:
    inputs = (torch.rand(8, 5), torch.randint(0, 10, (8, 3)))
    with pytest.raises(NoInteractionError, match="sum of parts") as error:
        dmt_fx.transform(WideAndDeep(), "2x2", example_inputs=inputs, tower_module=kind, compression=2)
    assert "wide.1" in error.value.found and "deep.0" in error.value.found
