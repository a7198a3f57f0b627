"""Lookup counts, composite embeddings (quotient-remainder,
mixed dimensions) and joint tables are analysed table by table and stay exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from rich.console import Console

import dmt_fx
from dmt_fx.cli.plan import render as render_plan
from dmt_fx.cli.report import plan_report
from dmt_fx.ir.errors import CaptureError, PlanError

BATCH, DIM, ROWS = 6, 8, 50


class FieldsModel(nn.Module):
    """nn.Embedding on a [B, F] index tensor (F lookups per sample) beside one on [B]."""

    def __init__(self, fields: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fields = nn.Embedding(ROWS, DIM)
        self.single = nn.Embedding(ROWS, DIM)
        self.top = nn.Linear(DIM * (fields + 2), 1)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor, one: torch.Tensor) -> torch.Tensor:
        return self.top(torch.cat([dense, self.fields(ids).flatten(1), self.single(one)], dim=1))


def test_embedding_on_fields_counts_one_lookup_per_field() -> None:
    """Class 6: the tower cost is F x dim x 4 bytes per sample, not dim x 4."""
    fields = 5
    gen = torch.Generator().manual_seed(1)
    inputs = (torch.randn(BATCH, DIM), torch.randint(0, ROWS, (BATCH, fields), generator=gen),
              torch.randint(0, ROWS, (BATCH,), generator=gen))
    plan = dmt_fx.tower_plan(dmt_fx.transform(FieldsModel(fields), "2x1", example_inputs=inputs))
    cost = {t.features: t.lookup_cost for t in plan.towers}
    assert cost == {("fields",): fields * DIM * 4.0, ("single",): DIM * 4.0}


def _qr_model() -> tuple[nn.Module, tuple]:
    from tests.harness.corpus.composite import COMPOSITE_ENTRIES
    return next(e for e in COMPOSITE_ENTRIES if e.name == "QR DLRM (mult)").build(0)


def test_quotient_remainder_tables_all_appear_and_pair_up() -> None:
    """Class 4: both tables of every QR bag are in the sites, the memory and one tower."""
    model, inputs = _qr_model()
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs)
    result = dmt_fx.dmt_result(gm)
    params = {n: p for n, p in model.named_parameters() if n.startswith("emb_l.")}
    assert sorted(t.param for t in result.sites.tables) == sorted(params)  # 3 bags x (weight_q, weight_r)
    assert sum(t.memory_bytes for t in result.plan.towers) == sum(p.numel() * 4 for p in params.values())
    composites = result.sites.composites()
    assert composites == {f"emb_l.{i}": (f"emb_l.{i}.weight_q", f"emb_l.{i}.weight_r") for i in range(3)}
    tower_of = result.plan.tower_of()
    for unit in composites:
        assert len({tower_of[f.name] for f in result.sites.features if f.unit == unit}) == 1


def test_a_plan_splitting_a_quotient_remainder_pair_is_refused() -> None:
    model, inputs = _qr_model()
    features = [f"emb_l.{i}.weight_{s}" for i in range(3) for s in "qr"]
    plan = {"topology": "2x2", "towers": [{"host": 0, "features": features[:1]},
                                          {"host": 1, "features": features[1:]}]}
    with pytest.raises(PlanError, match="composite embedding 'emb_l.0'"):
        dmt_fx.transform(model, "2x2", example_inputs=inputs, plan=plan)
    whole = {"topology": "2x2", "towers": [{"host": 0, "features": features[:2]},
                                           {"host": 1, "features": features[2:]}]}
    assert dmt_fx.tower_plan(dmt_fx.transform(model, "2x2", example_inputs=inputs, plan=whole)).features


def test_functional_lookups_without_example_inputs_say_how_to_capture_them() -> None:
    from tests.harness.corpus.composite import COMPOSITE_ENTRIES
    model, _ = next(e for e in COMPOSITE_ENTRIES if e.name == "QR fields (mult)").build(0)
    with pytest.raises(CaptureError, match="functional embedding lookups") as info:
        dmt_fx.transform(model, "2x2")
    assert "example_inputs" in str(info.value)


def test_plan_shows_the_quotient_remainder_pairs() -> None:
    model, inputs = _qr_model()
    data = plan_report(dmt_fx.transform(model, "2x2", example_inputs=inputs))
    assert [c["tables"] for c in data["composites"]] == [[f"emb_l.{i}.weight_q", f"emb_l.{i}.weight_r"]
                                                         for i in range(3)]
    out = Console(record=True, width=200)
    render_plan(out, data, target="qr", tower_module="identity", compression=1)
    assert "emb_l.1.weight_q + emb_l.1.weight_r" in out.export_text()
