"""Run-time input validation: each bad batch gets an InputValidationError naming the feature
and the bad value; valid batches pass unchanged; the switch removes the checks."""

from __future__ import annotations

import pytest
import torch
from torchrec import KeyedJaggedTensor

import dmt_fx
from dmt_fx.compiler.validation import InputValidationError
from examples import reference_dlrm, torchrec_dlrm, weighted_shared


@pytest.fixture(scope="module")
def dlrm():
    model, inputs = torchrec_dlrm.build()
    return model, dmt_fx.transform(model, "2x2", example_inputs=inputs)


def kjt(keys, values, lengths, weights=None) -> KeyedJaggedTensor:
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=torch.as_tensor(values),
                                               lengths=torch.as_tensor(lengths),
                                               weights=None if weights is None else torch.as_tensor(weights))


KEYS = ["f0", "f1", "f2", "f3"]
DENSE = torch.randn(2, 13)


@pytest.mark.parametrize("sparse, dense, match", [
    (kjt(["f0", "f1", "f2"], [1, 2, 3], [1, 0, 1, 0, 1, 0]), DENSE, r"missing \['f3'\]"),
    (kjt(KEYS, [150, 2, 3, 4], [1, 0, 1, 0, 1, 0, 1, 0]), DENSE, r"feature 'f0' id 150"),  # f0: 100 rows
    (kjt(KEYS, [1, 2, 3, -4], [1, 0, 1, 0, 1, 0, 1, 0]), DENSE, r"feature 'f3' id -4"),
    (kjt(KEYS, [1.0, 2.0, 3.0, 4.0], [1, 0, 1, 0, 1, 0, 1, 0]), DENSE, "dtype torch.float32"),
    (kjt(KEYS, [1, 2, 3, 4], [1, 0, 1, 0, 1, 0, 1, 0]), torch.randn(3, 13), r"batch sizes"),
])
def test_bad_sparse_batches(dlrm, sparse, dense, match) -> None:
    _, gm = dlrm
    with pytest.raises(InputValidationError, match=match) as info:
        gm(dense, sparse)
    assert "validate_inputs=False" in str(info.value)


def test_lengths_that_do_not_match_the_ids(dlrm) -> None:
    _, gm = dlrm
    bad = KeyedJaggedTensor(keys=KEYS, values=torch.tensor([1, 2, 3]), lengths=torch.tensor([1, 0, 1, 0, 1, 0, 1, 0]))
    with pytest.raises(InputValidationError, match="lengths sum to 4 for 3 ids"):
        gm(DENSE, bad)


def test_weighted_collection_needs_weights() -> None:
    model, inputs = weighted_shared.build()
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs)
    dense, good = inputs
    unweighted = KeyedJaggedTensor.from_lengths_sync(keys=good.keys(), values=good.values(), lengths=good.lengths())
    with pytest.raises(InputValidationError, match="float per-id weights"):
        gm(dense, unweighted)


def test_plain_ids_out_of_range() -> None:
    model, inputs = reference_dlrm.build()
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs)
    dense, offsets, ids = inputs
    bad = [i.clone() for i in ids]
    bad[2][0] = 10_000_000
    with pytest.raises(InputValidationError, match=r"feature 'emb_l.2' id 10000000"):
        gm(dense, offsets, bad)


def test_valid_batches_are_unchanged_and_the_switch_removes_the_checks(dlrm) -> None:
    model, gm = dlrm
    batch = torchrec_dlrm.make_inputs(6, 9)
    assert torch.equal(gm(*batch), model(*batch))
    off = dmt_fx.transform(model, "2x2", example_inputs=batch, validate_inputs=False)
    assert not hasattr(off, "dmt_input_validator")
    assert all(n.meta.get("dmt", {}).get("role") != "validate_inputs" for n in off.graph.nodes)
    assert torch.equal(off(*batch), model(*batch))


def _with_unread_key(batch: KeyedJaggedTensor) -> KeyedJaggedTensor:
    """`batch` plus a key "zz" no lookup reads, whose ids fit no table (the original ignores them)."""
    stride = batch.stride()
    lengths = torch.cat([batch.lengths(), torch.ones(stride, dtype=batch.lengths().dtype)])
    values = torch.cat([batch.values(), torch.full((stride,), 10_000_000, dtype=batch.values().dtype)])
    return KeyedJaggedTensor.from_lengths_sync(keys=batch.keys() + ["zz"], values=values, lengths=lengths)


def test_a_key_the_model_never_reads_is_accepted_as_the_original_accepts_it(dlrm) -> None:
    """Validation is no stricter than the model."""
    model, gm = dlrm
    dense, sparse = torchrec_dlrm.make_inputs(6, 9)
    extra = _with_unread_key(sparse)
    assert torch.equal(gm(dense, extra), model(dense, extra))
    again = dmt_fx.transform(model, "2x2", example_inputs=(dense, extra))  # verify=True compares
    assert torch.equal(again(dense, extra), model(dense, sparse))
