"""Every kind of bad input gets a DMTError saying what was found, what was expected, how to fix it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torchrec import (
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    EmbeddingCollection,
    EmbeddingConfig,
    KeyedJaggedTensor,
    PoolingType,
)

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


def test_an_embedding_collection_is_a_sequence_site() -> None:
    """An EmbeddingCollection (unpooled) is no longer refused: its features are
    sequence features of their towers (tests/test_sequences.py)."""
    model = _SequenceModel()
    kjt = KeyedJaggedTensor.from_lengths_sync(["f"], torch.tensor([1, 2, 3, 4]), torch.tensor([3, 0, 1]))
    gm = dmt_fx.transform(model, "2x2", example_inputs=(kjt,))
    assert torch.equal(gm(kjt), model(kjt))
    assert dmt_fx.dmt_result(gm).sites.feature("f").sequence


def test_the_sequence_remedy_works() -> None:
    """The first remedy for an EmbeddingCollection (same tables in an
    EmbeddingBagCollection with sum pooling) transforms and computes the summed sequences."""
    sequence = _SequenceModel()
    config = EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=10, feature_names=["f"],
                                pooling=PoolingType.SUM)
    pooled = _Pooled(EmbeddingBagCollection(tables=[config]))
    pooled.ebc.embedding_bags["t"].weight.data.copy_(sequence.ec.embeddings["t"].weight.data)
    kjt = KeyedJaggedTensor.from_lengths_sync(["f"], torch.tensor([1, 2, 3, 4]), torch.tensor([3, 1]))
    expected = torch.stack([sequence.ec(kjt)["f"].to_dense()[i].sum(0) for i in range(2)])
    gm = dmt_fx.transform(pooled, "2x2", example_inputs=(kjt,))
    assert torch.equal(gm(kjt), expected)


class _Pooled(nn.Module):
    def __init__(self, ebc: EmbeddingBagCollection) -> None:
        super().__init__()
        self.ebc = ebc

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        return self.ebc(kjt)["f"]


class _Quantized(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = torch.ao.nn.quantized.EmbeddingBag(10, 4)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.bag(ids, offsets)


def test_quantized_embeddings_are_refused_by_type() -> None:
    with pytest.raises(UnsupportedEmbeddingError, match="quantized.*at 'bag'") as info:
        dmt_fx.transform(_Quantized(), "2x2")
    _assert_helpful(info.value)
    assert "float model" in str(info.value)


class _Attention(nn.Module):
    """Self-attention over the embeddings (AutoInt style): out_proj is a
    NonDynamicallyQuantizableLinear, which a class-name test took for quantization."""

    def __init__(self) -> None:
        super().__init__()
        self.bags = nn.ModuleList(nn.EmbeddingBag(10, 8) for _ in range(3))
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8 * 4, 1)
        self.dense = nn.Linear(5, 8)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        tokens = [self.dense(dense)] + [bag(ids[:, i:i + 1]) for i, bag in enumerate(self.bags)]
        x = torch.stack(tokens, dim=1)
        y, _ = self.attention(x, x, x)
        return self.out(y.flatten(1))


def test_attention_is_not_quantization() -> None:
    """Attention over embeddings is not taken for a quantization: it transforms and stays equal."""
    model = _Attention()
    inputs = (torch.randn(4, 5), torch.randint(0, 10, (4, 3)))
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs)
    assert torch.equal(gm(*inputs), model(*inputs))


class _EmbeddingsOnly(nn.Module):
    """Embeddings never meet a dense input (factorization-machine style)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.EmbeddingBag(10, 4), nn.EmbeddingBag(10, 4)
        self.out = nn.Linear(8, 1)

    def forward(self, ids_a, off_a, ids_b, off_b):
        return self.out(torch.cat([self.a(ids_a, off_a), self.b(ids_b, off_b)], dim=1))


def test_no_dense_input_transforms_and_only_compressing_towers_refuse() -> None:
    """The identity rewrite needs no interaction site."""
    model = _EmbeddingsOnly()
    ids, off = torch.randint(0, 10, (6,)), torch.tensor([0, 2, 4])
    inputs = (ids, off, ids.flip(0), off)
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs)
    assert torch.equal(gm(*inputs), model(*inputs))
    assert dmt_fx.dmt_result(gm).sites.interaction.kind == "none"
    with pytest.raises(NoInteractionError, match="tower_module='linear' on a model whose 2 embedding lookups "
                                                 "never meet dense data") as info:
        dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module="linear", compression=2)
    _assert_helpful(info.value)
    assert "tower_module='identity'" in str(info.value)


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
