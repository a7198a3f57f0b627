"""Compressing tower modules and the interaction rewrite (opt-in: they change the model)."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dmt_fx
from dmt_fx import DMTError, TowerSpec
from dmt_fx.compiler.interactions import INTERACTIONS
from dmt_fx.compiler.tower_modules import TOWER_MODULES, out_width
from dmt_fx.compiler.tower_modules.dcn import DCNTower
from dmt_fx.compiler.tower_modules.dot import DotTower
from dmt_fx.jobs.data import clicks

ZOO_EQUAL_DIMS = ["torchrec_dlrm", "torchrec_dlrm_dcn", "torchrec_dlrm_projection", "reference_dlrm"]
ZOO_MIXED_DIMS = ["weighted_shared", "two_collections", "plain_embedding"]
COMPRESSING = [name for name, kind in TOWER_MODULES.items() if kind.changes_model and not kind.sequences]


def _spec(n: int = 4, d: int = 8, c: int = 2, vector_dim: int | None = None) -> TowerSpec:
    dims = (d,) * n
    return TowerSpec(0, 0, tuple(f"f{i}" for i in range(n)), dims, c, out_width(dims, c, vector_dim), vector_dim)


def test_every_builtin_kind_is_registered() -> None:
    assert {"identity", "linear", "dot", "dcn"} <= set(TOWER_MODULES.names())
    assert not TOWER_MODULES.get("identity").changes_model and {"linear", "dot", "dcn"} <= set(COMPRESSING)


def test_unknown_kind_lists_the_registered_ones() -> None:
    from examples import torchrec_dlrm

    model, inputs = torchrec_dlrm.build()
    with pytest.raises(DMTError, match="register_tower_module") as info:
        dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module="nope", compression=2)
    assert all(name in str(info.value) for name in TOWER_MODULES.names())


@pytest.mark.parametrize("kind", COMPRESSING)
@pytest.mark.parametrize("c", [1, 2, 4, 8])
def test_tower_module_shapes_compression_and_gradients(kind: str, c: int) -> None:
    spec = _spec(n=8, d=8, c=c)
    module = TOWER_MODULES.get(kind).factory(spec)
    x = torch.randn(5, spec.in_width, requires_grad=True)
    y = module(x)
    assert y.shape == (5, spec.in_width // c)  # c divides the width a tower sends
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in module.parameters())


def test_vector_widths_are_whole_vectors() -> None:
    assert out_width((8,) * 8, 4, vector_dim=8) == 16  # 8 vectors -> 2 vectors of 8
    assert out_width((8,) * 3, 4, vector_dim=8) == 8  # at least one vector
    assert out_width((4, 8, 16), 2, vector_dim=None) == 14


def test_dot_tower_starts_by_passing_its_dot_products_on() -> None:
    module = DotTower(_spec(n=4, d=8, c=2))  # 6 pairs, out width 16
    x = torch.randn(3, 32)
    v = x.view(3, 4, 8)
    dots = torch.stack([(v[:, i] * v[:, j]).sum(1) for i in range(4) for j in range(i + 1, 4)], dim=1)
    assert torch.allclose(module(x)[:, :6], dots, atol=1e-5)
    bound = 1 / (32 + 6) ** 0.5  # torch's default init bound for the fan-in
    assert module.proj.weight[6:].abs().max() <= 0.1 * bound  # the other outputs start small
    wide = DotTower(_spec(n=8, d=8, c=8))  # 28 pairs do not fit in 8 outputs: default init
    assert not torch.equal(wide.proj.weight[:, 64:], torch.eye(28)[:8])


def test_dcn_tower_starts_as_a_projection() -> None:
    module = DCNTower(_spec())
    x = torch.randn(3, 32)
    assert torch.allclose(module(x), module.proj(x))


def _first_linear_in_features(gm: torch.fx.GraphModule) -> list[int]:
    return [m.in_features for n, m in gm.named_modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("name", ZOO_EQUAL_DIMS + ZOO_MIXED_DIMS)
@pytest.mark.parametrize("kind", ["linear", "dcn", "dot"])
def test_interaction_rewrite_per_kind(name: str, kind: str) -> None:
    module = importlib.import_module(f"examples.{name}")
    model, inputs = module.build()
    if kind == "dot" and name in ZOO_MIXED_DIMS:
        with pytest.raises(DMTError, match="equal embedding dims inside a tower"):
            dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module=kind, compression=2)
        return
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module=kind, compression=2)
    result = dmt_fx.dmt_result(gm)
    names = [r.name for r in result.passes]
    assert result.plan.changes_model and names.index("interaction") == names.index("tower_modules") + 1
    assert next(r for r in result.passes if r.name == "interaction").changes_model
    out = gm(*module.make_inputs(6, 3))
    assert out.shape == model(*module.make_inputs(6, 3)).shape  # same output shape
    roles = [n.meta.get("dmt", {}).get("role") for n in gm.graph.nodes]
    assert "merge" not in roles and roles.count("tower_output") == len(result.plan.towers)
    out.sum().backward()  # gradients reach tables, tower modules and the rebuilt layers
    for path, param in gm.named_parameters():
        if path.startswith("dmt_tower_modules"):
            assert param.grad is not None, path


def test_over_arch_is_rebuilt_for_the_new_width() -> None:
    from examples import torchrec_dlrm

    model, inputs = torchrec_dlrm.build()  # 4 features of dim 8: F + 1 = 5 vectors
    assert model.over_arch.model[0]._mlp[0]._linear.in_features == 8 + 5 * 4 // 2
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module="linear", compression=2)
    # 2 towers of 2 features, c = 2: one vector each, K = 2: D + (K + 1) K / 2 dot products,
    # plus the K tower outputs themselves (K x D)
    assert gm.inter_arch.F == 2
    assert gm.get_submodule("over_arch.model.0._mlp.0._linear").in_features == 8 + 3 * 2 // 2 + 2 * 8
    assert model.over_arch.model[0]._mlp[0]._linear.in_features == 18  # the user's model is untouched


class CopiedInteractionArch(nn.Module):
    """torchrec's InteractionArch copied into a user's module: same code, another class."""

    def __init__(self, num_sparse_features: int) -> None:
        super().__init__()
        self.F: int = num_sparse_features
        self.register_buffer("triu_indices", torch.triu_indices(self.F + 1, self.F + 1, offset=1), persistent=False)

    def forward(self, dense_features: torch.Tensor, sparse_features: torch.Tensor) -> torch.Tensor:
        if self.F <= 0:
            return dense_features
        (B, D) = dense_features.shape
        combined_values = torch.cat((dense_features.unsqueeze(1), sparse_features), dim=1)
        interactions = torch.bmm(combined_values, torch.transpose(combined_values, 1, 2))
        interactions_flat = interactions[:, self.triu_indices[0], self.triu_indices[1]]
        return torch.cat((dense_features, interactions_flat), dim=1)


class ScaledInteractionArch(CopiedInteractionArch):
    """The same interface with a learned scale: not torchrec's arch, must not be taken for it."""

    def __init__(self, num_sparse_features: int) -> None:
        super().__init__(num_sparse_features)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, dense_features: torch.Tensor, sparse_features: torch.Tensor) -> torch.Tensor:
        return super().forward(dense_features, sparse_features) * self.scale


def _dlrm_with(arch: type[nn.Module]):
    from examples import torchrec_dlrm

    model, inputs = torchrec_dlrm.build()
    model.inter_arch = arch(model.inter_arch.F)
    return model, inputs


def test_copied_interaction_arch_is_recognised_by_structure() -> None:
    model, inputs = _dlrm_with(CopiedInteractionArch)
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs)  # identity: verified equal to the model
    assert dmt_fx.dmt_result(gm).sites.interaction.kind == "torchrec.InteractionArch"
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module="linear", compression=2)
    assert dmt_fx.dmt_result(gm).sites.interaction.kind == "torchrec.InteractionArch"
    # as for torchrec's own class: K = 2 tower vectors, D + (K + 1) K / 2 dots + K x D tower outputs
    assert gm.inter_arch.F == 2
    assert gm.get_submodule("over_arch.model.0._mlp.0._linear").in_features == 8 + 3 + 2 * 8
    assert gm(*inputs).shape == model(*inputs).shape
    assert isinstance(model.inter_arch, CopiedInteractionArch)  # the user's model is untouched


def test_a_different_structure_is_not_taken_for_torchrecs_arch() -> None:
    model, inputs = _dlrm_with(ScaledInteractionArch)
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs)
    assert dmt_fx.dmt_result(gm).sites.interaction.kind != "torchrec.InteractionArch"


def test_cross_host_width_drops_by_c() -> None:
    from examples import torchrec_dlrm

    model, inputs = torchrec_dlrm.build()
    for c in (1, 2):
        gm = dmt_fx.transform(model, "2x1", example_inputs=inputs, tower_module="linear", compression=c)
        widths = [m.spec.out_width for n, m in gm.named_modules() if n.count(".") == 1 and n.startswith("dmt_tower_modules")]
        assert sum(widths) == 32 // c


def test_factory_tower_module() -> None:
    from examples import two_collections

    seen = []

    def factory(spec: TowerSpec) -> nn.Module:
        seen.append(spec)
        return nn.Sequential(nn.Linear(spec.in_width, spec.out_width), nn.Tanh())

    model, inputs = two_collections.build()
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module=factory, compression=4)
    assert len(seen) == 2 and all(s.compression == 4 for s in seen)
    assert gm(*inputs).shape == (8, 1)


def test_factory_with_a_wrong_width_is_reported() -> None:
    from examples import two_collections

    model, inputs = two_collections.build()
    with pytest.raises(DMTError, match="returned shape"):
        dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module=lambda s: nn.Identity(), compression=2)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_bad_compression(bad) -> None:
    from examples import torchrec_dlrm

    model, inputs = torchrec_dlrm.build()
    with pytest.raises(DMTError, match="compression="):
        dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module="linear", compression=bad)


def test_compressing_needs_example_inputs() -> None:
    from examples import torchrec_dlrm

    model, _ = torchrec_dlrm.build()
    with pytest.raises(DMTError, match="without example_inputs"):
        dmt_fx.transform(model, "2x2", tower_module="linear", compression=2)


class _SumInteraction(nn.Module):
    """Embeddings added to the dense output: an interaction dmt_fx does not know."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.EmbeddingBag(20, 8), nn.EmbeddingBag(20, 8)
        self.dense, self.over = nn.Linear(3, 8), nn.Linear(8, 1)

    def forward(self, dense, ids_a, off_a, ids_b, off_b):
        return self.over(self.dense(dense) + self.a(ids_a, off_a) + self.b(ids_b, off_b))


def _sum_inputs():
    ids = torch.tensor([1, 2, 3, 4])
    offsets = torch.tensor([0, 2])
    return torch.randn(2, 3), ids, offsets, ids + 1, offsets


def test_unknown_interaction_says_how_to_register() -> None:
    with pytest.raises(DMTError, match="register_interaction"):
        dmt_fx.transform(_SumInteraction(), "2x1", example_inputs=_sum_inputs(), tower_module="linear")


def test_registered_interaction() -> None:
    with INTERACTIONS.scoped():  # the kind must not outlive the test
        _check_registered_interaction()


def _check_registered_interaction() -> None:

    def matcher(gm, node) -> bool:
        return node.target is __import__("operator").add

    def rewriter(ctx) -> None:
        # dense + sum of the towers' (B, 8) outputs: replace the chain by dense + towers
        dense = next(n for n in ctx.gm.graph.nodes if n.op == "call_module" and n.target == "dense")
        with ctx.gm.graph.inserting_before(ctx.node):
            total = dense
            for tower in ctx.towers:
                total = ctx.gm.graph.call_function(__import__("operator").add, (total, tower))
        ctx.node.replace_all_uses_with(total)

    dmt_fx.register_interaction("sum", matcher, rewriter, vectors=True)
    gm = dmt_fx.transform(_SumInteraction(), "2x1", example_inputs=_sum_inputs(), tower_module="linear")
    assert dmt_fx.dmt_result(gm).sites.interaction.kind == "sum"
    assert gm(*_sum_inputs()).shape == (2, 1)


def test_short_training_run_loss_decreases() -> None:
    from examples import torchrec_dlrm

    model, inputs = torchrec_dlrm.build()
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module="dot", compression=2)
    optimizer = torch.optim.Adagrad(gm.parameters(), lr=0.05)
    losses = []
    for step in range(60):
        batch = torchrec_dlrm.make_inputs(64, step)
        loss = F.binary_cross_entropy_with_logits(gm(*batch), clicks(batch, step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.05, losses
