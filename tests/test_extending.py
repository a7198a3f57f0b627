"""Extending dmt_fx from user code: a tower-module kind, an interaction kind and a partitioner,
each registered FROM THIS FILE through the public call and then used through `transform`.

The built-ins register through the same calls (dmt_fx/compiler/{tower_modules,interactions,
partitioners}/, one file each), so these tests exercise the path a new built-in takes too.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import dmt_fx
from dmt_fx import PlanError, TowerSpec
from dmt_fx.cli import main
from dmt_fx.compiler.interactions import INTERACTIONS, InteractionContext, module_matcher
from dmt_fx.compiler.partitioners import PARTITIONERS, PartitionRequest, register_partitioner
from dmt_fx.compiler.tower_modules import TOWER_MODULES, register_tower_module
from examples import torchrec_dlrm


@pytest.fixture(autouse=True)
def fresh_registries():
    """What a test registers must not outlive it."""
    with TOWER_MODULES.scoped(), INTERACTIONS.scoped(), PARTITIONERS.scoped():
        yield


def _logits_equal(model: nn.Module, gm: torch.fx.GraphModule, inputs: tuple) -> bool:
    with torch.no_grad():
        return torch.equal(model(*inputs), gm(*inputs))


# ---------------------------------------------------------------- a tower-module kind


class GatedTower(nn.Module):
    """A user's compressing tower: a sigmoid-gated projection, W -> out_width."""

    def __init__(self, spec: TowerSpec) -> None:
        super().__init__()
        self.value, self.gate = nn.Linear(spec.in_width, spec.out_width), nn.Linear(spec.in_width, spec.out_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value(x) * torch.sigmoid(self.gate(x))


def test_new_tower_module_kind_through_transform() -> None:
    register_tower_module("gated", GatedTower)
    assert "gated" in TOWER_MODULES.names()  # what CLI choices read
    model, inputs = torchrec_dlrm.build()
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module="gated", compression=2)
    towers = [m for name, m in gm.named_modules() if isinstance(m, GatedTower)]
    plan = dmt_fx.tower_plan(gm)
    assert len(towers) == len(plan.towers) == 2 and plan.changes_model
    # 4 features of dim 8 in 2 towers, c = 2, a dot interaction: one 8-wide vector per tower
    assert [t.value.out_features for t in towers] == [8, 8]
    out = gm(*torchrec_dlrm.make_inputs(5, 1))
    assert out.shape == (5, 1)
    out.sum().backward()
    assert all(p.grad is not None for t in towers for p in t.parameters())


class CountingIdentity(nn.Module):
    """A user's numerics-preserving tower module: hands the lookups on, counts its calls."""

    def __init__(self, spec: TowerSpec) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, *lookups):
        self.calls += 1
        return lookups


def test_new_numerics_preserving_kind_keeps_the_model() -> None:
    register_tower_module("counting", CountingIdentity, changes_model=False)
    model, inputs = torchrec_dlrm.build()
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module="counting")
    assert not dmt_fx.tower_plan(gm).changes_model
    assert "interaction" not in [r.name for r in dmt_fx.dmt_result(gm).passes]
    towers = [m for m in gm.modules() if isinstance(m, CountingIdentity)]
    before = [t.calls for t in towers]
    assert _logits_equal(model, gm, torchrec_dlrm.make_inputs(7, 2))
    assert [t.calls for t in towers] == [c + 1 for c in before]  # the graph really calls them


# ---------------------------------------------------------------- an interaction kind


class WeightedSum(nn.Module):
    """A user's interaction: dense + sum_i w_i e_i over (B, N, D) sparse vectors."""

    def __init__(self, num_vectors: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.linspace(0.5, 1.5, num_vectors))

    def forward(self, dense: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        return dense + (vectors * self.weights[None, :, None]).sum(dim=1)


class WeightedSumModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bags = nn.ModuleList([nn.EmbeddingBag(30, 8) for _ in range(4)])
        self.dense, self.inter, self.over = nn.Linear(3, 8), WeightedSum(4), nn.Linear(8, 1)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        vectors = torch.stack([bag(ids + k, offsets) for k, bag in enumerate(self.bags)], dim=1)
        return self.over(self.inter(self.dense(dense), vectors))


def _weighted_sum_inputs(batch: int = 6) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(batch)
    return torch.randn(batch, 3, generator=g), torch.randint(0, 26, (2 * batch,), generator=g), \
        torch.arange(0, 2 * batch, 2)


def is_weighted_sum(module: nn.Module) -> bool:
    """By structure: one weight per vector and forward(dense, vectors), whatever the class."""
    weights = getattr(module, "weights", None)
    return isinstance(weights, nn.Parameter) and weights.dim() == 1 and not list(module.children())


def rewrite_weighted_sum(ctx: InteractionContext) -> None:
    # One weight per tower vector; the width after the interaction stays D: no layer to rebuild.
    owner, _, name = ctx.node.target.rpartition(".")
    setattr(ctx.gm.get_submodule(owner) if owner else ctx.gm, name, WeightedSum(ctx.num_vectors))
    ctx.node.update_arg(1, ctx.stacked())


def test_new_interaction_kind_through_transform() -> None:
    dmt_fx.register_interaction("weighted_sum", module_matcher(is_weighted_sum), rewrite_weighted_sum,
                                vectors=True, module=is_weighted_sum)
    model, inputs = WeightedSumModel(), _weighted_sum_inputs()
    # identity towers: the kind is recognised and the model kept exactly
    gm = dmt_fx.transform(model, "2x1", example_inputs=inputs)
    assert dmt_fx.dmt_result(gm).sites.interaction.kind == "weighted_sum"
    assert _logits_equal(model, gm, _weighted_sum_inputs(9))
    # compressing towers: 2 towers of 2 vectors, c = 2 -> one vector each, K = 2
    gm = dmt_fx.transform(model, "2x1", example_inputs=inputs, tower_module="linear", compression=2)
    assert gm.inter.weights.numel() == 2 and model.inter.weights.numel() == 4
    roles = [n.meta.get("dmt", {}).get("role") for n in gm.graph.nodes]
    assert roles.count("tower_output") == 2 and "received_embeddings" not in roles
    out = gm(*_weighted_sum_inputs(5))
    assert out.shape == (5, 1)
    out.sum().backward()
    assert gm.inter.weights.grad is not None
    assert all(p.grad is not None for name, p in gm.named_parameters() if name.startswith("dmt_tower_modules"))


def test_without_the_registration_the_interaction_is_unknown() -> None:
    model, inputs = WeightedSumModel(), _weighted_sum_inputs()
    with pytest.raises(dmt_fx.DMTError, match="register_interaction"):
        dmt_fx.transform(model, "2x1", example_inputs=inputs, tower_module="linear", compression=2)


# ---------------------------------------------------------------- a partitioner


def outer_pairs(request: PartitionRequest) -> list[list[str]]:
    """A user's partitioner: first with last feature, second with second to last, ..."""
    names = [f.name for f in request.sites.features]
    half = len(names) // 2
    return [[names[i], names[-1 - i]] for i in range(half)]


def test_new_partitioner_through_transform() -> None:
    register_partitioner("outer_pairs", outer_pairs)
    assert "outer_pairs" in PARTITIONERS.names()
    model, inputs = torchrec_dlrm.build()
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs, partitioner="outer_pairs")
    plan = dmt_fx.tower_plan(gm)
    assert [set(t.features) for t in plan.towers] == [{"f0", "f3"}, {"f1", "f2"}]
    assert plan.partitioner == "outer_pairs" and [t.host for t in plan.towers] == [0, 1]
    assert _logits_equal(model, gm, torchrec_dlrm.make_inputs(7, 3))  # SPTT keeps the model


def test_a_partitioner_that_drops_a_feature_is_refused() -> None:
    register_partitioner("lossy", lambda request: [["f0", "f1"], ["f2"]])
    model, inputs = torchrec_dlrm.build()
    with pytest.raises(PlanError, match="missing features"):
        dmt_fx.transform(model, "2x2", example_inputs=inputs, partitioner="lossy")


# ---------------------------------------------------------------- the same kinds through the CLI

TARGET_SOURCE = '''
"""A user's model file that brings its own tower-module kind and partitioner."""
import torch.nn as nn

import dmt_fx
from examples import torchrec_dlrm


class HalfTower(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.proj = nn.Linear(spec.in_width, spec.out_width)

    def forward(self, x):
        return self.proj(x)


def first_and_last(request):
    names = [f.name for f in request.sites.features]
    return [[names[0], names[-1]], names[1:-1]]


dmt_fx.register_tower_module("half", HalfTower)
dmt_fx.register_partitioner("first_and_last", first_and_last)


def build():
    return torchrec_dlrm.build()
'''


def _plan_json(capsys, *argv: str) -> dict:
    assert main(["plan", *argv, "--topology", "2x2", "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_kinds_a_target_registers_work_through_the_cli(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "user_model_with_kinds.py").write_text(TARGET_SOURCE)
    target = f"{tmp_path}/user_model_with_kinds.py:build"
    data = _plan_json(capsys, target, "--tower-module", "half", "--compression", "2",
                      "--partitioner", "first_and_last")
    assert [set(t["features"]) for t in data["plan"]["towers"]] == [{"f0", "f3"}, {"f1", "f2"}]
    assert data["changes_model"] and data["plan"]["partitioner"] == "first_and_last"


def test_kinds_registered_in_process_work_through_the_cli(capsys) -> None:
    register_tower_module("gated", GatedTower)
    register_partitioner("outer_pairs", outer_pairs)
    data = _plan_json(capsys, "examples/torchrec_dlrm.py:build", "--tower-module", "gated", "--compression", "2",
                      "--partitioner", "outer_pairs")
    assert [set(t["features"]) for t in data["plan"]["towers"]] == [{"f0", "f3"}, {"f1", "f2"}]
    assert main(["diff", "examples/torchrec_dlrm.py:build", "--topology", "2x2", "--tower-module", "gated",
                 "--compression", "2", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rewritten"]
    assert [r["role"] for r in rows].count("tower_module") == 2  # one gated module per tower


def weighted_sum_model() -> tuple[nn.Module, tuple]:
    """A TARGET factory for the CLI test below."""
    return WeightedSumModel(), _weighted_sum_inputs()


def test_an_interaction_kind_registered_in_process_works_through_the_cli(capsys) -> None:
    dmt_fx.register_interaction("weighted_sum", module_matcher(is_weighted_sum), rewrite_weighted_sum,
                                vectors=True, module=is_weighted_sum)
    target = "tests/test_extending.py:weighted_sum_model"
    data = _plan_json(capsys, target, "--tower-module", "linear", "--compression", "2")
    assert data["interaction"]["kind"] == "weighted_sum" and data["changes_model"]


def test_an_unregistered_kind_is_one_cli_error_listing_the_registered_ones(capsys) -> None:
    assert main(["plan", "examples/torchrec_dlrm.py:build", "--topology", "2x2", "--tower-module", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dmt-fx: error:") and err.count("\n") == 1
    assert all(kind in err for kind in TOWER_MODULES.names())
