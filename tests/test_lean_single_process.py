"""The single-process identity DMT model does little more than the original (issue 13 item 2):
the tower KJTs are gathered only if read, the merged KeyedTensor is concatenated only if
read, and input validation is a few kernels per KJT. Counted in aten/fbgemm ops (what a
loaded machine cannot blur), forward and backward."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torchrec import KeyedJaggedTensor, KeyedTensor

import dmt_fx
from dmt_fx.compiler.validation import InputValidationError
from dmt_fx.ir import ops
from dmt_fx.models import zoo


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _step_ops(model, batch) -> Counter:
    fresh = [KeyedJaggedTensor.from_lengths_sync(keys=x.keys(), values=x.values(), lengths=x.lengths())
             if isinstance(x, KeyedJaggedTensor) else x for x in batch]
    with _Ops() as counted:
        model(*fresh).sum().backward()
    return counted.ops


@pytest.fixture(scope="module")
def models():
    model, example = zoo.default_dlrm()
    return (model, dmt_fx.transform(copy.deepcopy(model), "2x2", example_inputs=example),
            dmt_fx.transform(copy.deepcopy(model), "2x2", example_inputs=example, validate_inputs=False))


def test_identity_dmt_adds_few_ops_per_step(models) -> None:
    model, checked, unchecked = models
    batch = zoo.make_inputs(64, 3)
    for m in models:  # the first backward also makes every .grad
        _step_ops(m, batch)
    original = _step_ops(model, batch)
    extra = _step_ops(unchecked, batch) - original
    # two tower collections (one more concatenation of pooled rows, forward and backward) and
    # the parts' per-key split: no gathered tower KJTs, no merge concatenation
    assert sum(extra.values()) <= 4, extra
    validation = _step_ops(checked, batch) - _step_ops(unchecked, batch)
    assert validation["fbgemm.bounds_check_indices.default"] == 1 and sum(validation.values()) <= 6, validation


def test_valid_batches_still_equal_the_original(models) -> None:
    model, checked, _ = models
    batch = zoo.make_inputs(32, 5)
    assert torch.equal(checked(*batch), model(*batch))


KEYS = ["user_id", "item_id", "category", "subcategory", "city", "device", "hour", "weekday"]


def _kjt(values, lengths, value_dtype=torch.int64) -> KeyedJaggedTensor:
    return KeyedJaggedTensor(keys=KEYS, values=torch.tensor(values, dtype=value_dtype),
                             lengths=torch.tensor(lengths, dtype=torch.int64))


ONE_EACH = [1, 0] * 8  # lengths, key-major, batch 2: one id per key, in sample 0


@pytest.mark.parametrize("values, lengths, dtype, match", [
    # a negative length whose total still matches: only the fused check's least length sees it
    ([1] * 8, [2, -1] + [1, 0] * 7, torch.int64, "lengths sum to 8 for 8 ids"),
    ([1, 1, 1, 1, 1, 1, 1, 100], ONE_EACH, torch.int32, "feature 'weekday' id 100"),  # 100 rows
    ([1, 1, 1, 1, 1, 1, -1, 1], ONE_EACH, torch.int32, "feature 'hour' id -1"),
    ([1, 1, 1, 1, 1, 1, 1, 99], ONE_EACH, torch.int64, None),  # the last row is fine
])
def test_the_fused_check_refuses_with_the_same_messages(models, values, lengths, dtype, match) -> None:
    model, checked, _ = models
    batch = (torch.randn(2, zoo.DENSE), _kjt(values, lengths, dtype))
    if match is None:
        assert torch.equal(checked(*batch), model(*batch))
        return
    with pytest.raises(InputValidationError, match=match):
        checked(*batch)


def test_lazy_tower_kjt_and_merge_equal_their_eager_forms() -> None:
    _, example = zoo.default_dlrm()
    kjt = example[1]
    tower = ["city", "user_id", "hour"]
    got, want = ops.select_features(kjt, tower), kjt.permute([kjt.keys().index(k) for k in tower])
    assert got.to_dict().keys() == set(tower) and torch.equal(got.values(), want.values())
    assert torch.equal(got.lengths(), want.lengths()) and got.offset_per_key() == want.offset_per_key()
    a = torch.randn(4, 6, requires_grad=True)
    b = torch.randn(4, 4, requires_grad=True)
    parts = [KeyedTensor(["x", "z"], [2, 4], a), KeyedTensor(["y"], [4], b)]
    merged = ops.merge_keyed_tensors(parts, ["x", "y", "z"])
    columns = merged.to_dict()
    assert list(columns) == ["x", "y", "z"]
    assert torch.equal(columns["z"], a[:, 2:]) and torch.equal(columns["y"], b)
    assert torch.equal(merged.values(), torch.cat([a[:, :2], b, a[:, 2:]], dim=1))
    assert merged.device() == a.device
