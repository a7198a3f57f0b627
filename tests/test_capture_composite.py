"""Issue 11, classes 6, 4 and 5: lookup counts, composite embeddings (quotient-remainder,
mixed dimensions) and joint tables are analysed table by table and stay exact."""

from __future__ import annotations

import torch
import torch.nn as nn

import dmt_fx

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
