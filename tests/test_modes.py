"""train() / eval() on the DMT model, unit by unit (the corpus checks whole models).

- A batch norm *function* called with `training=self.training` in a forward the graph cannot
  keep whole is refused at capture, by the real reason (ModeError), on both capture routes,
  also when the forward reading `training` is a base class's reached through super().
- A forward that branches on `self.training` itself answers only in its capture mode; the
  other mode raises ModeError naming the fix.
- gm.train() / gm.eval() leave the user's model object's flags alone.
- A BatchNorm/Dropout model captured by torch.export trains 3 SGD steps in train mode and is
  then evaluated in eval mode exactly as the original (outputs, parameters, running stats).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dmt_fx
from dmt_fx.ir.errors import ModeError
from tests.harness.corpus.modes import ExportBNDropoutMLP, make_inputs


class FunctionalBatchNorm(nn.Module):
    def __init__(self, export_route: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.export_route = export_route
        self.fields = nn.ModuleList(nn.Embedding(10, 4) for _ in range(2))
        self.top = nn.Linear(5 + 8, 1)
        self.register_buffer("running_mean", torch.zeros(8))
        self.register_buffer("running_var", torch.ones(8))

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if self.export_route:  # an int from a shape: only torch.export captures this
            ids = ids[:, :int(ids.shape[1])]
        embedded = torch.cat([t(ids[:, i]) for i, t in enumerate(self.fields)], dim=1)
        embedded = F.batch_norm(embedded, self.running_mean, self.running_var, training=self.training)
        return self.top(torch.cat([dense, embedded], dim=1))


class InheritedForward(FunctionalBatchNorm):
    """A library's model class: forward() defined by its base class, reached through super()."""

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(dense, ids)


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    dense, ids = make_inputs(8, 0)
    return dense, ids[:, :2]


@pytest.mark.parametrize("cls", [FunctionalBatchNorm, InheritedForward])
@pytest.mark.parametrize("export_route", [False, True])
def test_functional_batch_norm_is_refused_by_its_reason(cls, export_route: bool) -> None:
    with pytest.raises(ModeError, match="mode-dependent functions") as error:
        dmt_fx.transform(cls(export_route), "2x2", example_inputs=_inputs())
    assert "batch_size > 1" not in str(error.value) and "failed too" not in str(error.value)


class BranchesOnTraining(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fields = nn.ModuleList(nn.Embedding(10, 4) for _ in range(2))
        self.top = nn.Linear(5 + 8, 1)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        out = self.top(torch.cat([dense] + [t(ids[:, i]) for i, t in enumerate(self.fields)], dim=1))
        if self.training:
            out = out * 2
        return out


def test_forward_branching_on_training_runs_in_its_capture_mode_only() -> None:
    model = BranchesOnTraining()
    ref = copy.deepcopy(model)
    gm = dmt_fx.transform(model, "2x2", example_inputs=_inputs())
    assert torch.equal(gm(*_inputs()), ref(*_inputs()))
    gm.eval()
    with pytest.raises(ModeError, match="branches on self.training"):
        gm(*_inputs())


def test_switching_the_dmt_model_leaves_the_users_model_alone() -> None:
    model = ExportBNDropoutMLP(0)
    gm = dmt_fx.transform(model, "2x2", example_inputs=make_inputs(8, 0))
    gm.eval()
    assert all(m.training for m in model.modules())
    assert not any(m.training for m in gm.modules())


def test_export_route_trains_then_evaluates_as_the_original() -> None:
    model = ExportBNDropoutMLP(0)
    ref = copy.deepcopy(model)
    gm = dmt_fx.transform(model, "2x2", example_inputs=make_inputs(8, 0))
    assert dmt_fx.dmt_result(gm).route == "export"
    opt, ref_opt = torch.optim.SGD(gm.parameters(), lr=0.1), torch.optim.SGD(ref.parameters(), lr=0.1)
    for step in range(3):
        batch = make_inputs(8, step + 1)
        for m, o in ((ref, ref_opt), (gm, opt)):
            o.zero_grad()
            torch.manual_seed(step)  # the same dropout masks
            m(*batch).square().mean().backward()
            o.step()
    for a, b in zip(ref.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    ref.eval()
    gm.eval()
    batch = make_inputs(8, 99)
    assert torch.equal(ref(*batch), gm(*batch))
