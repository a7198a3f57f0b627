"""Every kind of bad input gets a DMTError saying what was found, what was expected, how to fix it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor

import dmt_fx
from dmt_fx import (
    CaptureError,
    DMTError,
    ExampleInputsError,
    NoEmbeddingError,
    NoInteractionError,
    TopologyError,
    UnsupportedEmbeddingError,
)
from examples import plain_embedding, reference_dlrm, torchrec_dlrm


def _assert_helpful(error: DMTError) -> None:
    text = str(error)
    assert "found:" in text and "expected:" in text and "Possible solutions:" in text


def test_no_embeddings() -> None:
    with pytest.raises(NoEmbeddingError) as info:
        dmt_fx.transform(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), "2x2")
    _assert_helpful(info.value)


class _SequenceModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ec = EmbeddingCollection([EmbeddingConfig(name="t", embedding_dim=4, num_embeddings=10,
                                                       feature_names=["f"])])

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        return self.ec(kjt)["f"].values()


def test_unsupported_embedding_kind() -> None:
    with pytest.raises(UnsupportedEmbeddingError, match="EmbeddingCollection") as info:
        dmt_fx.transform(_SequenceModel(), "2x2")
    _assert_helpful(info.value)


class _EmbeddingsOnly(nn.Module):
    """Embeddings never meet a dense input."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.EmbeddingBag(10, 4), nn.EmbeddingBag(10, 4)
        self.out = nn.Linear(8, 1)

    def forward(self, ids_a, off_a, ids_b, off_b):
        return self.out(torch.cat([self.a(ids_a, off_a), self.b(ids_b, off_b)], dim=1))


def test_no_interaction() -> None:
    with pytest.raises(NoInteractionError, match="no node joins all 2 embedding lookups") as info:
        dmt_fx.transform(_EmbeddingsOnly(), "2x2")
    _assert_helpful(info.value)


@pytest.mark.parametrize("text", ["2y4", "0x2"])
def test_invalid_topology(text: str) -> None:
    model, _ = torchrec_dlrm.build()
    with pytest.raises(TopologyError) as info:
        dmt_fx.transform(model, text)
    _assert_helpful(info.value)


def test_capture_failure_names_the_line_and_the_fix() -> None:
    model, _ = reference_dlrm.build()
    with pytest.raises(CaptureError) as info:
        dmt_fx.transform(model, "2x2")
    text = str(info.value)
    assert "reference_dlrm.py" in text and "example_inputs" in text
    _assert_helpful(info.value)


def test_example_inputs_wrong_arity() -> None:
    model, inputs = plain_embedding.build()
    with pytest.raises(ExampleInputsError, match="positional arguments for forward") as info:
        dmt_fx.transform(model, "2x2", example_inputs=inputs[:3])
    _assert_helpful(info.value)


def test_example_inputs_ids_out_of_range() -> None:
    model, (dense, kjt) = torchrec_dlrm.build()
    bad = KeyedJaggedTensor.from_lengths_sync(keys=kjt.keys(), values=kjt.values() + 10_000,
                                              lengths=kjt.lengths())
    with pytest.raises(ExampleInputsError, match="model fails on example_inputs") as info:
        dmt_fx.transform(model, "2x2", example_inputs=(dense, bad))
    _assert_helpful(info.value)


def test_not_a_module() -> None:
    with pytest.raises(DMTError, match="torch.nn.Module"):
        dmt_fx.transform("model", "2x2")


def test_tower_plan_of_a_plain_module() -> None:
    with pytest.raises(DMTError, match="not made by dmt_fx.transform"):
        dmt_fx.tower_plan(nn.Linear(2, 2))


def test_user_model_is_not_changed() -> None:
    """transform leaves the user's model as it was: same modules, state and mode."""
    model, inputs = torchrec_dlrm.build()
    model.train()
    before = copy.deepcopy(model.state_dict())
    names = [n for n, _ in model.named_modules()]
    dmt_fx.transform(model, "2x2", example_inputs=inputs)
    assert [n for n, _ in model.named_modules()] == names
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.training for m in model.modules())
