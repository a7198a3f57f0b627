"""The DMT model is the original model: bitwise-equal outputs, gradients, training and
checkpoints, on every model of the zoo and several topologies.

`transform` shares the model's parameters, so every comparison is against `ref`, a deep
copy of the original made BEFORE the transform. Transforms are cached per module
(reference_dlrm goes through torch.export, ~0.7 s each); each test first restores the
pristine parameters into the shared model and clears gradients.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import io
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dmt_fx
from examples import ZOO
from tests.harness.equivalence import (
    assert_grads_equal,
    assert_same_outputs,
    assert_state_dicts_equal,
    grads_by_key,
    tensor_leaves,
)

TOPOLOGIES = ["1x1", "2x2", "2x4", "4x1"]
NAMES = sorted(ZOO)
CASES = [pytest.param(name, topo, id=f"{name}-{topo}") for name in NAMES for topo in TOPOLOGIES]


@dataclasses.dataclass
class Case:
    name: str
    topology: str
    module: Any  # the zoo module (build, make_inputs)
    model: nn.Module  # the original; its parameters are shared with gm
    gm: torch.fx.GraphModule
    pristine: nn.Module  # a deep copy of the original taken before transform; never run

    def fresh_ref(self) -> nn.Module:
        return copy.deepcopy(self.pristine)

    def reset(self) -> None:
        """Restore the shared parameters (through the original model, not gm) and clear grads."""
        self.model.load_state_dict(self.pristine.state_dict())
        for p in self.model.parameters():
            p.grad = None
        for p in self.gm.parameters():
            p.grad = None


@functools.lru_cache(maxsize=None)
def _transformed(name: str, topology: str, seed: int) -> Case:
    module = importlib.import_module(ZOO[name])
    model, example = module.build(seed)
    pristine = copy.deepcopy(model)
    gm = dmt_fx.transform(model, topology, example_inputs=example)  # verify=True
    return Case(name, topology, module, model, gm, pristine)


def case(name: str, topology: str, seed: int = 0) -> Case:
    c = _transformed(name, topology, seed)
    c.reset()
    return c


def _loss(out: torch.Tensor, seed: int) -> torch.Tensor:
    labels = torch.randint(0, 2, out.shape, generator=torch.Generator().manual_seed(seed)).float()
    return F.binary_cross_entropy_with_logits(out, labels)


# ---------------------------------------------------------------- outputs


@pytest.mark.parametrize("name,topology", CASES)
def test_outputs_bitwise_equal(name: str, topology: str) -> None:
    c = case(name, topology)
    ref = c.fresh_ref()
    for batch_size, seed in [(8, 101), (1, 102), (5, 103)]:
        x = c.module.make_inputs(batch_size, seed)
        assert_same_outputs(ref(*x), c.gm(*x))
    # The DMT model really is split into towers (not a pass-through of the original).
    plan = dmt_fx.tower_plan(c.gm)
    num_hosts = int(topology.split("x")[0])
    assert 1 <= len(plan.towers) <= num_hosts
    assert sorted(f for t in plan.towers for f in t.features) == sorted(
        f.name for f in dmt_fx.dmt_result(c.gm).sites.features)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("name,topology", CASES)
def test_parameter_gradients_bitwise_equal(name: str, topology: str) -> None:
    c = case(name, topology)
    ref = c.fresh_ref()
    for i, (batch_size, seed) in enumerate([(8, 201), (1, 202), (5, 203)]):
        for p in ref.parameters():
            p.grad = None
        for p in c.gm.parameters():
            p.grad = None
        x = c.module.make_inputs(batch_size, seed)
        # Alternate losses: a plain sum and a BCE loss (non-uniform upstream gradients).
        expected, got = ref(*x), c.gm(*x)
        (expected.sum() if i % 2 else _loss(expected, seed)).backward()
        (got.sum() if i % 2 else _loss(got, seed)).backward()
        assert_grads_equal(ref, c.gm)
        grads = grads_by_key(c.gm)
        assert grads and all(g is not None for g in grads.values()), "some parameter got no gradient"


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("name,topology", CASES)
def test_sgd_training_matches(name: str, topology: str) -> None:
    c = case(name, topology)
    ref = c.fresh_ref()
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt_dmt = torch.optim.SGD(c.gm.parameters(), lr=0.1)
    for step in range(5):
        x = c.module.make_inputs(4 + step, 300 + step)
        opt_ref.zero_grad()
        opt_dmt.zero_grad()
        loss_ref = _loss(ref(*x), step)
        loss_dmt = _loss(c.gm(*x), step)
        assert torch.equal(loss_ref, loss_dmt), f"loss differs at step {step}"
        loss_ref.backward()
        loss_dmt.backward()
        opt_ref.step()
        opt_dmt.step()
    final = ref.state_dict()
    assert_state_dicts_equal(final, c.gm.state_dict())
    assert_state_dicts_equal(final, c.model.state_dict())  # same parameters underneath
    # The steps really moved the parameters.
    assert any(not torch.equal(v, c.pristine.state_dict()[k]) for k, v in final.items())


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name,topology", CASES)
def test_state_dict_uses_original_keys(name: str, topology: str) -> None:
    c = case(name, topology)
    assert_state_dicts_equal(c.pristine.state_dict(), c.gm.state_dict())
    assert list(c.gm.state_dict()) == list(c.model.state_dict())


@pytest.mark.parametrize("name,topology", CASES)
def test_original_loads_dmt_checkpoint(name: str, topology: str) -> None:
    c = case(name, topology)
    # Move gm's parameters away from the pristine values so the load is observable.
    with torch.no_grad():
        for p in c.gm.parameters():
            p.add_(0.25)
    fresh_ref = c.fresh_ref()
    fresh_ref.load_state_dict(c.gm.state_dict(), strict=True)
    x = c.module.make_inputs(6, 401)
    assert_same_outputs(fresh_ref(*x), c.gm(*x))
    assert not torch.equal(tensor_leaves(c.pristine(*x))[0], tensor_leaves(fresh_ref(*x))[0])


@pytest.mark.parametrize("name,topology", CASES)
def test_dmt_loads_original_checkpoint(name: str, topology: str) -> None:
    c = case(name, topology)
    other = case(name, topology, seed=1)  # a differently-seeded build, transformed
    ref = c.fresh_ref()
    x = c.module.make_inputs(6, 402)
    assert not torch.equal(tensor_leaves(ref(*x))[0], tensor_leaves(other.gm(*x))[0]), "seeds 0 and 1 build equal models"
    other.gm.load_state_dict(ref.state_dict(), strict=True)
    assert_same_outputs(ref(*x), other.gm(*x))
    assert_state_dicts_equal(ref.state_dict(), other.gm.state_dict())
    other.reset()


@pytest.mark.parametrize("name,topology", CASES)
def test_checkpoint_round_trip(name: str, topology: str) -> None:
    c = case(name, topology)
    other = case(name, topology, seed=1)
    saved = c.gm.state_dict()
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)
    result = other.gm.load_state_dict(loaded, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert_state_dicts_equal(saved, other.gm.state_dict())
    x = c.module.make_inputs(3, 403)
    assert_same_outputs(c.gm(*x), other.gm(*x))
    other.reset()


# ---------------------------------------------------------------- shared parameters


@pytest.mark.parametrize("name,topology", CASES)
def test_shares_the_models_parameters(name: str, topology: str) -> None:
    c = case(name, topology)
    model_params = {id(p): p for p in c.model.parameters()}
    gm_params = list(c.gm.parameters())
    assert len(gm_params) == len(model_params)
    assert all(id(p) in model_params for p in gm_params), "gm holds a parameter the model does not"
    # Key by key: gm's parameter under an original key is the model's parameter under it.
    model_vars = c.model.state_dict(keep_vars=True)
    for key, value in c.gm.state_dict(keep_vars=True).items():
        if isinstance(value, nn.Parameter):
            assert value is model_vars[key], f"{key} is not the model's parameter"
    assert sum(p.numel() for p in gm_params) == sum(p.numel() for p in c.model.parameters())
    # Writing through the model is seen by gm (no copies).
    x = c.module.make_inputs(4, 501)
    before = tensor_leaves(c.gm(*x))[0]
    with torch.no_grad():
        for p in c.model.parameters():
            p.mul_(0.5)
    assert not torch.equal(before, tensor_leaves(c.gm(*x))[0])


def test_state_dict_hook_leaves_a_parents_other_keys_in_place() -> None:
    """Inside a parent module, only the DMT model's own keys are renamed and reordered."""
    from examples import torchrec_dlrm

    model, inputs = torchrec_dlrm.build()
    parent = torch.nn.Module()
    parent.head = torch.nn.Linear(2, 2)
    parent.body = dmt_fx.transform(model, "2x2", example_inputs=inputs)
    keys = list(parent.state_dict())
    assert keys[:2] == ["head.weight", "head.bias"]
    assert keys[2:] == [f"body.{k}" for k in model.state_dict()]
