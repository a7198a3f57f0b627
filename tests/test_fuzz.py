"""The fuzzer: dmt_fx.transform on generated models gives an equivalent model (or, for the
odd inputs, a DMTError), checked by the one equivalence checker (tests/harness/equivalence.py).

* `test_fuzz_transform`: the fuzz cases of tests/harness/random_dlrms.py (random TorchRec
  concat models, torchrec.models.dlrm / DLRM_DCN / DLRM_Projection, reference-DLRM-style
  plain models on the export route, odd inputs). `transform(..., verify=True)` raises a
  DMTError (allowed, and required for the odd inputs; any other exception fails the test),
  or the result's outputs on a fresh batch are bitwise equal to an untouched copy of the
  original and so is every parameter gradient. 200 examples in CI; `-m slow` runs 2,000.
* `test_random_torchrec_model`, `test_random_plain_model` (tests/harness/random_models.py):
  transform with example inputs (verify=True) succeeds; outputs and every parameter gradient
  bitwise equal on a fresh batch; every feature is in exactly one tower; the features of a
  shared table are in one tower; there are min(num_hosts, num_tables) towers. The plain
  family goes through torch.export (~0.5 s per example), so it runs a fifth of the examples.
* `test_random_style_model` (tests/harness/random_styles.py): the input styles of the corpus,
  in both modes when the head is mode-dependent; a tenth of the examples in CI and at least
  2,000 with -m slow (`test_random_style_model_soak`).

Example counts come from the Hypothesis profile (tests/conftest.py: 200 in CI,
DMT_HYPOTHESIS_EXAMPLES overrides).
"""

from __future__ import annotations

import collections
import copy

import pytest
import torch
from hypothesis import event, given, note, settings

import dmt_fx
from dmt_fx import Topology
from tests.harness.equivalence import assert_bitwise_equivalent, check_equivalence
from tests.harness.random_dlrms import Case, build_case, cases, plan_dict
from tests.harness.random_models import (
    PlainSpec,
    TorchRecSpec,
    build_plain_model,
    build_torchrec_model,
    make_plain_inputs,
    make_torchrec_inputs,
    plain_specs,
    torchrec_specs,
)
from tests.harness.random_styles import StyleSpec, build_style_model, make_style_inputs, style_specs

# ---------------------------------------------------------------- fuzz cases (odd inputs included)


def check_case(case: Case) -> None:
    event(f"family {case.family}" + (" (must fail)" if case.must_fail else "") +
          (f", plan {case.plan}" if case.plan != "auto" else ""))
    model, example, batch = build_case(case)
    ref = copy.deepcopy(model)  # before transform: the result shares the model's parameters
    try:
        gm = dmt_fx.transform(model, case.topology, example_inputs=example, plan=plan_dict(case), verify=True)
    except dmt_fx.DMTError as exc:
        note(f"DMTError: {exc}")
        event(f"DMTError {type(exc).__name__}")
        return  # allowed (and required when case.must_fail)
    assert not case.must_fail, f"odd input transformed without a DMTError: {case}"
    event("transformed")
    note(f"plan: {[t.features for t in dmt_fx.tower_plan(gm).towers]}")
    assert_bitwise_equivalent(ref, gm, batch)


@given(case=cases())
def test_fuzz_transform(case: Case) -> None:
    check_case(case)


@pytest.mark.slow
@settings(max_examples=2000)
@given(case=cases())
def test_fuzz_transform_2000(case: Case) -> None:
    check_case(case)


# ---------------------------------------------------------------- random TorchRec and plain models

PLAIN_EXAMPLES = max(1, settings.default.max_examples // 5)


def _check_plan(gm, names: list[str], table_of: dict[str, str], num_hosts: int, num_tables: int) -> None:
    plan = dmt_fx.tower_plan(gm)
    planned = [f for t in plan.towers for f in t.features]
    counts = collections.Counter(planned)
    assert sorted(counts) == sorted(names), "plan features differ from the model's"
    assert all(c == 1 for c in counts.values()), f"features in several towers: {counts}"
    assert len(plan.towers) == min(num_hosts, num_tables)
    assert all(t.features for t in plan.towers), "empty tower"
    hosts = [t.host for t in plan.towers]
    assert len(set(hosts)) == len(hosts) and all(0 <= h < num_hosts for h in hosts)
    tower_of = plan.tower_of()
    towers_of_table: dict[str, set[int]] = {}
    for f in names:
        towers_of_table.setdefault(table_of[f], set()).add(tower_of[f])
    split = {t: s for t, s in towers_of_table.items() if len(s) > 1}
    assert not split, f"shared tables spread over towers: {split}"


def _torchrec_events(spec: TorchRecSpec) -> None:
    """Coverage of the generator (pytest --hypothesis-show-statistics)."""
    tables = [t for c in spec.collections for t in c.tables]
    event(f"batch size {spec.batch_size}")
    event(f"{len(spec.collections)} collection(s)")
    event(f"largest table serves {max(len(t.features) for t in tables)} feature(s)")
    event(f"towers {min(spec.num_hosts, spec.num_tables)}")
    event("features: 1-8" if spec.num_features <= 8 else "features: 9-32" if spec.num_features <= 32 else "features: 33-64")
    if any(c.weighted for c in spec.collections):
        event("weighted collection")
    if any(t.pooling == "mean" for t in tables):
        event("mean pooling")
    if any(c.read_order is not None for c in spec.collections):
        event("read by key")
    if len(spec.collections) == 2 and spec.collections[0].kjt_keys[0] in spec.collections[1].kjt_keys:
        event("same keys in both collections")
    if any(0 in m for m in spec.max_lengths):
        event("a feature with no ids")


def _plain_events(spec: PlainSpec) -> None:
    event(f"batch size {spec.batch_size}")
    event(f"largest table serves {max(spec.feature_table.count(t) for t in range(spec.num_tables))} feature(s)")
    if any(spec.feature_weighted):
        event("per-sample weights")
    if any(t.mode == "mean" for t in spec.tables):
        event("mean pooling")
    if 0 in spec.max_lengths:
        event("a feature with no ids")


@given(spec=torchrec_specs())
def test_random_torchrec_model(spec: TorchRecSpec) -> None:
    model = build_torchrec_model(spec)
    ref = copy.deepcopy(model)  # before transform: gm shares the model's parameters
    example = make_torchrec_inputs(spec, spec.example_batch_size, spec.seed)
    gm = dmt_fx.transform(model, Topology(spec.num_hosts, spec.local_world_size), example_inputs=example)
    note(f"plan: {[t.features for t in dmt_fx.tower_plan(gm).towers]}")
    _torchrec_events(spec)
    assert dmt_fx.dmt_result(gm).route == "symbolic"
    assert_bitwise_equivalent(ref, gm, make_torchrec_inputs(spec, spec.batch_size, spec.seed + 1))
    names = spec.feature_names()
    _check_plan(gm, [n for n, _, _ in names], {n: t for n, _, t in names}, spec.num_hosts, spec.num_tables)


@settings(max_examples=PLAIN_EXAMPLES)
@given(spec=plain_specs())
def test_random_plain_model(spec: PlainSpec) -> None:
    model = build_plain_model(spec)
    ref = copy.deepcopy(model)
    # Example batch: >= 2 samples and >= 1 id per bag, so torch.export keeps every
    # dimension symbolic (it specialises dimensions of size 0 or 1).
    example = make_plain_inputs(spec, 4, spec.seed, min_length=1)
    gm = dmt_fx.transform(model, Topology(spec.num_hosts, spec.local_world_size), example_inputs=example)
    note(f"plan: {[t.features for t in dmt_fx.tower_plan(gm).towers]}")
    _plain_events(spec)
    assert dmt_fx.dmt_result(gm).route == "export"
    assert_bitwise_equivalent(ref, gm, make_plain_inputs(spec, spec.batch_size, spec.seed + 1))
    names = spec.feature_names()
    _check_plan(gm, [n for n, _ in names], dict(names), spec.num_hosts, spec.num_tables)


# ---------------------------------------------------------------- known bug


class _KeyInTwoTables(torch.nn.Module):
    """One KJT key looked up in two tables (legal in TorchRec: outputs "a@t0", "a@t1")."""

    def __init__(self) -> None:
        super().__init__()
        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        self.ebc = EmbeddingBagCollection([
            EmbeddingBagConfig(name="t0", embedding_dim=4, num_embeddings=5, feature_names=["a"]),
            EmbeddingBagConfig(name="t1", embedding_dim=2, num_embeddings=5, feature_names=["a", "b"]),
        ])
        self.dense_arch = torch.nn.Linear(3, 2)
        self.over_arch = torch.nn.Linear(2 + 4 + 2 + 2, 1)

    def forward(self, dense, kjt):
        return self.over_arch(torch.cat([self.dense_arch(dense), self.ebc(kjt).values()], dim=1))


def test_key_looked_up_in_two_tables() -> None:
    """A KJT key read by two tables of different towers (torchrec names the outputs a@t0, a@t1)."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    torch.manual_seed(0)
    model = _KeyInTwoTables()
    ref = copy.deepcopy(model)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b"], values=torch.tensor([1, 2, 3]),
                                              lengths=torch.tensor([1, 0, 1, 1]))
    x = (torch.rand(2, 3), kjt)
    gm = dmt_fx.transform(model, "2x1", example_inputs=x)
    plan = dmt_fx.tower_plan(gm)
    assert len(plan.towers) == 2
    assert_bitwise_equivalent(ref, gm, x)
    towers = [gm.get_submodule(f"dmt_towers.tower_{t.index}.ebc") for t in plan.towers]
    assert sorted(n for t in towers for n in t.embedding_bags) == ["t0", "t1"]


# ---------------------------------------------------------------- input styles

STYLE_EXAMPLES = max(1, settings.default.max_examples // 10)
SOAK_EXAMPLES = max(2000, settings.default.max_examples)


def _check_style(spec: StyleSpec) -> None:
    """Transform succeeds (no exception at all: every style is valid), outputs and gradients
    are bitwise equal on a fresh batch, every table is in one tower and QR pairs share one;
    a joint table is one table per field with constant offsets, else whole with a warning."""
    model = build_style_model(spec)
    pristine = copy.deepcopy(model)
    gm = dmt_fx.transform(model, spec.topology, example_inputs=make_style_inputs(spec, 4, spec.seed))
    event(f"style {spec.style}{'' if spec.has_dense else ', no dense input'}")
    event(f"route {dmt_fx.dmt_result(gm).route}")
    event(f"head {spec.head}, captured in {'train' if spec.training else 'eval'} mode")
    # both modes when the head is mode-dependent: outputs, gradients and running statistics
    check_equivalence(model, pristine, gm, make_style_inputs(spec, spec.batch_size, spec.seed + 1))
    result = dmt_fx.dmt_result(gm)
    assert len(result.sites.tables) == spec.num_tables, "a physical table is missing from the analysis"
    tower_of = result.plan.tower_of()
    for f in result.sites.features:
        partners = [g.name for g in result.sites.features if g.table == f.table or (f.unit and g.unit == f.unit)]
        assert len({tower_of[g] for g in partners}) == 1, f"{f.name}'s table or composite spans towers"
    assert len(result.plan.towers) == min(spec.num_hosts, spec.num_units)
    assert bool(result.plan.warnings) == spec.warns, result.plan.warnings


@settings(max_examples=STYLE_EXAMPLES)
@given(spec=style_specs())
def test_random_style_model(spec: StyleSpec) -> None:
    _check_style(spec)


@pytest.mark.slow
@settings(max_examples=SOAK_EXAMPLES)
@given(spec=style_specs())
def test_random_style_model_soak(spec: StyleSpec) -> None:
    """Opt-in (-m slow): at least 2,000 examples of the styles."""
    _check_style(spec)
