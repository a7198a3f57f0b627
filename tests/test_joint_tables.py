"""Joint tables: which offsets split a table by field, and why one stays whole.

Each model here reads one weight for all fields with per-field offsets added to a [B, F]
id tensor; the test checks the analysis (one table per field, row ranges, or a warning
naming the reason), that the rewrite is bitwise (outputs and gradients) and that the plan
carries the warning through JSON and `dmt-fx plan`."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import dmt_fx
from dmt_fx.cli.report import plan_report
from dmt_fx.cli.tables import plan_extras
from dmt_fx.ir.plan import TowerPlan
from tests.harness.corpus.joint import FIELD_ROWS, field_ids

ROWS = sum(FIELD_ROWS)
STARTS = [sum(FIELD_ROWS[:i]) for i in range(len(FIELD_ROWS))]


class Joint(nn.Module):
    """emb(ids + offsets) with the offsets in the form `how` names."""

    def __init__(self, how: str, **embedding: object) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        bag = how == "bag"
        self.emb = nn.EmbeddingBag(ROWS, 4, mode="sum") if bag else nn.Embedding(ROWS, 4, **embedding)
        self.register_buffer("starts", torch.tensor(STARTS))
        self.register_buffer("unsorted", torch.tensor(STARTS[::-1]))
        self.tuple = tuple(STARTS)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        how = self.how
        if how in ("buffer", "bag"):
            offsets = self.starts
        elif how == "row":  # shape [1, F]
            offsets = self.starts.unsqueeze(0)
        elif how == "new_tensor":
            offsets = ids.new_tensor(self.tuple)
        elif how == "shifted":  # not starting at 0: rows 0..2 would be in no field
            offsets = self.starts + 3
        elif how == "unsorted":
            offsets = self.unsorted
        else:  # "twice": the same weight read by two lookups
            return (self.emb(ids + self.starts) + self.emb(ids + self.starts)).flatten(1)
        return self.emb(ids + offsets).reshape(ids.shape[0], -1)


def _transform(how: str, **embedding: object) -> tuple[nn.Module, nn.Module, torch.fx.GraphModule, torch.Tensor]:
    model = Joint(how, **embedding)
    ids = field_ids(0) if how != "shifted" else field_ids(0).clamp(max=1)
    pristine = copy.deepcopy(model)
    return model, pristine, dmt_fx.transform(model, "2x2", example_inputs=(ids,)), ids


@pytest.mark.parametrize("how", ["buffer", "row", "new_tensor"])
def test_constant_offsets_split_the_table_by_field(how: str) -> None:
    model, pristine, gm, ids = _transform(how)
    result = dmt_fx.dmt_result(gm)
    (fields,) = result.sites.joint_tables().values()
    assert [(t.row_offset, t.num_embeddings) for t in fields] == list(zip(STARTS, FIELD_ROWS))
    assert {t.param for t in fields} == {"emb.weight"} and not result.plan.warnings
    assert list(gm.state_dict()) == list(pristine.state_dict())  # one weight, one key
    expected, got = pristine(ids), gm(ids)
    expected.sum().backward()
    got.sum().backward()
    assert torch.equal(expected, got) and torch.equal(pristine.emb.weight.grad, model.emb.weight.grad)


@pytest.mark.parametrize("how, options, reason", [
    ("shifted", {}, "do not cut rows"),
    ("unsorted", {}, "do not cut rows"),
    ("twice", {}, "read by 2 lookups"),
    ("bag", {}, "nn.EmbeddingBag pools"),
    ("buffer", {"padding_idx": 0}, "padding_idx"),
    ("buffer", {"max_norm": 1.0}, "max_norm"),
])
def test_the_table_stays_whole_with_the_reason(how: str, options: dict, reason: str) -> None:
    _, pristine, gm, ids = _transform(how, **options)
    result = dmt_fx.dmt_result(gm)
    assert not result.sites.joint_tables() and len(result.sites.tables) == 1
    (warning,) = result.plan.warnings
    assert "'emb' stays whole" in warning and reason in warning, warning
    with torch.no_grad():
        assert torch.equal(pristine(ids), gm(ids))


def test_the_warning_reaches_json_and_the_cli_rendering() -> None:
    _, _, gm, _ = _transform("unsorted")
    plan = dmt_fx.tower_plan(gm)
    assert TowerPlan.from_json(plan.to_json()).warnings == plan.warnings
    assert "WARNING" in str(plan)
    data = plan_report(gm)
    assert data["warnings"] == list(plan.warnings) and data["joint_tables"] == []
    text = [str(getattr(x, "plain", x)) for x in plan_extras(data)]
    assert any("WARNING" in t and "stays whole" in t for t in text)


def test_a_user_plan_may_place_each_field() -> None:
    """Fields are partition units: a plan may put them anywhere, and a stale one is refused."""
    model = Joint("buffer")
    ids = field_ids(0)
    towers = [{"host": 0, "features": ["emb[0]", "emb[4]"]}, {"host": 1, "features": ["emb[1]", "emb[2]", "emb[3]"]}]
    gm = dmt_fx.transform(model, "2x2", example_inputs=(ids,), plan={"topology": "2x2", "towers": towers})
    assert dmt_fx.tower_plan(gm).towers[0].features == ("emb[0]", "emb[4]")
    with pytest.raises(dmt_fx.DMTError, match="missing features"):
        dmt_fx.transform(Joint("buffer"), "2x2", example_inputs=(ids,),
                         plan={"topology": "2x2", "towers": [{"host": 0, "features": ["emb"]}]})
