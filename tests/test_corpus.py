"""Real models as their authors wrote them transform and stay exactly equivalent.

For every corpus entry (tests/harness/corpus: torchrec's shipped models, each also as a user's copy,
and one small model per input style): transform on 2x2 with the example batch, then
  - outputs and parameter gradients equal the original's (bitwise; 1e-6 where kernels differ),
  - the state dict has the original's keys in the original's order,
  - checkpoints round-trip both ways (original -> DMT -> original),
  - every physical embedding table is in exactly one tower.
`python -m tests.test_corpus` prints the results table shown in the README.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
import torch
import torch.nn as nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection

import dmt_fx
from dmt_fx.compiler.partitioners.user_towers import user_tower_paths
from tests.harness.corpus import CORPUS, Entry
from tests.harness.equivalence import check_equivalence, float_leaves, max_diff

TOPOLOGY = "2x2"


@dataclasses.dataclass
class Row:
    model: str
    style: str
    route: str
    equivalence: str
    towers: str


def check_checkpoints(pristine: nn.Module, gm: nn.Module, inputs: tuple) -> None:
    keys = list(pristine.state_dict().keys())
    assert list(gm.state_dict().keys()) == keys, f"keys differ: {sorted(set(gm.state_dict()) ^ set(keys))}"
    other = copy.deepcopy(pristine)
    with torch.no_grad():
        for p in other.parameters():
            if p.is_floating_point():  # not a frozen integer parameter (joint offsets held as one)
                p.add_(torch.randn_like(p))
    gm.load_state_dict(other.state_dict())  # original -> DMT
    with torch.no_grad():
        expected = float_leaves(_seeded(other, inputs))
        assert max_diff(expected, float_leaves(_seeded(gm, inputs))) == 0
    back = copy.deepcopy(pristine)
    back.load_state_dict(gm.state_dict())  # DMT -> original
    for key, value in other.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def _seeded(model: nn.Module, inputs: tuple) -> Any:
    torch.manual_seed(0)  # the same dropout masks
    return model(*inputs)


def physical_tables(model: nn.Module) -> set[int]:
    """The distinct embedding weight tensors of the model (by identity)."""
    tables = set()
    for module in model.modules():
        if isinstance(module, EmbeddingBagCollection):
            tables |= {id(bag.weight) for bag in module.embedding_bags.values()}
        elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            tables.add(id(module.weight))
        elif type(module).__name__ == "QREmbeddingBag":  # the reference DLRM's: weight_q and weight_r
            tables |= {id(module.weight_q), id(module.weight_r)}
    return tables


def check_towers(model: nn.Module, gm: nn.Module) -> str:
    result = dmt_fx.dmt_result(gm)
    sites, plan = result.sites, result.plan
    per_tower = [{sites.feature(f).table for f in tower.features} for tower in plan.towers]
    placed = [t for tables in per_tower for t in tables]
    assert len(placed) == len(set(placed)), f"a table in two towers: {placed}"
    assert set(placed) == {t.name for t in sites.tables}, "a table in no tower"
    # a joint table split by field is one physical weight and one table per field
    assert len({t.param for t in sites.tables}) == len(physical_tables(model)), (
        f"{len(physical_tables(model))} physical tables, {len({t.param for t in sites.tables})} in the analysis")
    tower_of = plan.tower_of()
    for name, fields in sites.joint_tables().items():  # the fields' row ranges cut the whole weight
        weight = model.get_parameter(fields[0].param)
        assert [t.row_offset for t in fields] == [0] + [t.row_offset + t.num_embeddings for t in fields[:-1]]
        assert fields[-1].row_offset + fields[-1].num_embeddings == weight.shape[0], name
    if sites.joint_tables():  # split by field, the towers balance: no tower is left empty
        assert all(t.features for t in plan.towers), f"an empty tower: {plan}"
    for unit in sites.composites():  # the tables of a quotient-remainder bag share a tower
        assert len({tower_of[f.name] for f in sites.features if f.unit == unit}) == 1, f"{unit} split"
    for path in user_tower_paths(model):  # an author's EmbeddingTower stays whole (the default plan)
        features = [f for site in sites.sites if site.module.startswith(path + ".") for f in site.features]
        assert features and len({tower_of[f] for f in features}) == 1, f"user tower {path} split: {features}"
    return "; ".join(f"h{t.host}: {', '.join(t.features)}" for t in plan.towers)


def check(entry: Entry, seed: int = 0) -> Row:
    model, inputs = entry.build(seed)
    pristine = copy.deepcopy(model)
    gm = dmt_fx.transform(model, TOPOLOGY, example_inputs=inputs)
    towers = check_towers(model, gm)
    warnings = dmt_fx.tower_plan(gm).warnings
    assert any(entry.warns in w for w in warnings) if entry.warns else not warnings, warnings
    equivalence = check_equivalence(model, pristine, gm, inputs)
    check_checkpoints(pristine, gm, inputs)
    return Row(entry.name, entry.style, dmt_fx.dmt_result(gm).route, equivalence, towers)


def _param(entry: Entry) -> Any:
    marks = [pytest.mark.xfail(reason=entry.xfail, strict=True)] if entry.xfail else []
    return pytest.param(entry, id=entry.name.replace(" ", "_"), marks=marks)


ROWS: list[Row] = []


@pytest.fixture(scope="module", autouse=True)
def results_table(request: pytest.FixtureRequest):
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if ROWS and capture is not None:
        with capture.global_and_fixture_disabled():  # the table, even under -q
            print("\n" + "\n".join(table(ROWS)))


@pytest.mark.parametrize("entry", [_param(e) for e in CORPUS])
def test_corpus_model(entry: Entry) -> None:
    ROWS.append(check(entry))


def table(rows: list[Row]) -> list[str]:
    lines = ["| model | style | capture | equivalence | towers (2x2) |", "|---|---|---|---|---|"]
    return lines + [f"| {r.model} | {r.style} | {r.route} | {r.equivalence} | {r.towers} |" for r in rows]


if __name__ == "__main__":
    rows = []
    for e in CORPUS:
        try:
            rows.append(check(e))
        except Exception as exc:  # the table says what fails, and why
            rows.append(Row(e.name, e.style, "-", f"FAILS: {type(exc).__name__}: {str(exc).splitlines()[0]}", "-"))
    print("\n".join(table(rows)))


def test_user_towers_are_the_default_plan_and_can_be_overridden() -> None:
    """An already-towered model keeps its author's towers by default."""
    entry = next(e for e in CORPUS if e.name == "TestTowerSparseNN")
    model, inputs = entry.build(0)
    default = dmt_fx.tower_plan(dmt_fx.transform(model, TOPOLOGY, example_inputs=inputs))
    assert default.partitioner == "user_towers"
    tower_of = default.tower_of()
    assert tower_of["feature_2"] == tower_of["feature_3"]  # tower_0's collection holds tables 2 and 3
    chosen = dmt_fx.tower_plan(dmt_fx.transform(model, TOPOLOGY, example_inputs=inputs, partitioner="balanced"))
    assert chosen.partitioner == "balanced"
