"""The single-process identity DMT model does no more than the original:
the tower KJTs are gathered only if read, the tower collections' pooled columns and the
merged KeyedTensor are concatenated only if read, and input validation is a few kernels per KJT (in one process on the CPU: the least
length; the lookups refuse bad ids, LookupGuard names them). Counted in aten/fbgemm ops (what a
loaded machine cannot blur), forward and backward."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, KeyedTensor
from torchrec.modules.embedding_configs import PoolingType

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
    dmt = _step_ops(unchecked, batch)
    # no gathered tower KJTs, no merge concatenation, and the tower collections hand their
    # pooled columns through (pool_in_process): not even the concatenation of pooled rows and
    # its per-key split that TorchRec's collection makes (forward and backward)
    assert not dmt - original, dmt - original
    assert original["aten.cat.default"] - dmt["aten.cat.default"] == 2, (original, dmt)
    assert dmt["aten.split_with_sizes.default"] == original["aten.split_with_sizes.default"] - 1
    validation = _step_ops(checked, batch) - _step_ops(unchecked, batch)
    # in one process the lookups refuse bad ids: the least length is read back, nothing more
    assert validation == Counter({"aten.min.default": 1, "aten._local_scalar_dense.default": 1}), validation
    # without the guard (a copy: the distributed rank module is another such) the full check runs
    unguarded = copy.deepcopy(checked)
    _step_ops(unguarded, batch)  # its first backward makes every .grad
    full = _step_ops(unguarded, batch) - _step_ops(unchecked, batch)
    assert full["fbgemm.bounds_check_indices.default"] == 1 and sum(full.values()) <= 6, full


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
    ([1] * 8, [2, -1] + [1, 0] * 7, torch.int64, "feature 'user_id' length -1 .*sample 1"),
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


class _Tiny(nn.Module):
    """Two tables in one TorchRec collection (two towers on 2x2), pooling and weights chosen."""

    def __init__(self, pooling: PoolingType, weighted: bool, bag: type = nn.EmbeddingBag) -> None:
        super().__init__()
        self.ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name=f"t{i}", embedding_dim=4, num_embeddings=rows, feature_names=[key],
                               pooling=pooling) for i, (key, rows) in enumerate([("a", 10), ("b", 7)])],
            is_weighted=weighted)
        for table in self.ebc.embedding_bags.values():  # a kind of bag the check does not know
            if bag is not nn.EmbeddingBag:
                table.__class__ = bag
        self.top = nn.Linear(8, 1)

    def forward(self, dense: torch.Tensor, features: KeyedJaggedTensor) -> torch.Tensor:
        return self.top(self.ebc(features).values()) + dense


def _tiny_batch(ids: list[int], dtype: torch.dtype, weighted: bool) -> tuple:
    lengths = torch.tensor([2, 1, 1, 1])  # a: 2 ids then 1, b: 1 then 1
    weights = torch.rand(len(ids)) if weighted else None
    return (torch.zeros(2, 1), KeyedJaggedTensor(keys=["a", "b"], values=torch.tensor(ids, dtype=dtype),
                                                 lengths=lengths, weights=weights))


class _Unchecked(nn.EmbeddingBag):
    """A bag that does not refuse bad ids (it clamps them): left to it, a bad batch would pass."""

    def forward(self, input: torch.Tensor, offsets: torch.Tensor | None = None, per_sample_weights=None):
        return super().forward(input.clamp(0, self.num_embeddings - 1), offsets, per_sample_weights)


@pytest.mark.parametrize("pooling, weighted", [(PoolingType.SUM, False), (PoolingType.MEAN, False),
                                               (PoolingType.SUM, True)])  # TorchRec weights sum-pooled bags only
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("ids, match", [([1, 2, 3, 7, 1], "feature 'b' id 7"), ([1, 2, 3, 1, -2], "feature 'b' id -2"),
                                        ([10, 2, 3, 1, 1], "feature 'a' id 10"), ([1, 2, -1, 1, 6], "feature 'a' id -1")])
def test_lookups_refuse_bad_ids_with_the_validators_message(pooling, weighted, dtype, ids, match) -> None:
    """The id range left to the lookups: every bad id still refused, with the full check's message."""
    model = _Tiny(pooling, weighted)
    example = _tiny_batch([1, 2, 3, 4, 5], torch.int64, weighted)
    gm = dmt_fx.transform(copy.deepcopy(model), "2x2", example_inputs=example)
    assert gm.dmt_input_validator.lookups_check_ids == [True]
    batch = _tiny_batch(ids, dtype, weighted)
    with pytest.raises(InputValidationError, match=match) as info:
        gm(*batch)
    assert isinstance(info.value.__cause__, (RuntimeError, IndexError))  # refused by the lookup, then diagnosed
    with pytest.raises(InputValidationError) as full:  # the full check up front says the same
        copy.deepcopy(gm)(*batch)
    assert str(full.value) == str(info.value) and full.value.__cause__ is None


def test_negative_lengths_stay_checked_up_front() -> None:
    """Lengths [-1, 4] sum right; torch's sum-pooled CPU bag accepts their offsets [0, -1, 3] with
    int32 ids silently (checked: a wrong answer without the up-front least-length check)."""
    model = _Tiny(PoolingType.SUM, False)
    gm = dmt_fx.transform(copy.deepcopy(model), "2x2", example_inputs=_tiny_batch([1, 2, 3, 4, 5], torch.int64, False))
    bad = KeyedJaggedTensor(keys=["a", "b"], values=torch.tensor([1, 2, 3, 4, 5], dtype=torch.int32),
                            lengths=torch.tensor([-1, 4, 1, 1], dtype=torch.int32))
    with pytest.raises(InputValidationError, match="feature 'a' length -1") as info:
        gm(torch.zeros(2, 1), bad)
    assert info.value.__cause__ is None  # refused before any lookup


def test_unknown_lookups_keep_the_full_check() -> None:
    model = _Tiny(PoolingType.SUM, False, bag=_Unchecked)
    gm = dmt_fx.transform(copy.deepcopy(model), "2x2", example_inputs=_tiny_batch([1, 2, 3, 4, 5], torch.int64, False))
    assert gm.dmt_input_validator.lookups_check_ids == [False]
    with pytest.raises(InputValidationError, match="feature 'a' id 10") as info:
        gm(*_tiny_batch([10, 2, 3, 1, 1], torch.int64, False))
    assert info.value.__cause__ is None  # refused up front


def test_other_failures_are_not_renamed(models) -> None:
    """A failure that is not the batch's ids (here: dense input of another dtype) re-raises as is;
    a dense input of the wrong width is refused up front (its shape in example_inputs)."""
    _, checked, _ = models
    with pytest.raises(RuntimeError, match="dtype"):
        checked(torch.randn(2, zoo.DENSE, dtype=torch.float64), _kjt([1] * 8, ONE_EACH))
    with pytest.raises(InputValidationError, match=r"dense input 'dense_features' of shape \[2, 14\]") as info:
        checked(torch.randn(2, zoo.DENSE + 1), _kjt([1] * 8, ONE_EACH))
    assert info.value.__cause__ is None


def test_pooled_columns_equal_torchrecs_forward() -> None:
    """A tower collection's lean call: the same KeyedTensor as TorchRec's forward, weighted too."""
    for weighted in (False, True):
        model = _Tiny(PoolingType.SUM, weighted)
        batch = _tiny_batch([1, 2, 3, 4, 5], torch.int64, weighted)
        want = model.ebc(batch[1])
        got = ops.pool_in_process(copy.deepcopy(model.ebc))(batch[1])
        assert got.keys() == want.keys() and got.length_per_key() == want.length_per_key()
        assert all(torch.equal(got.to_dict()[k], want.to_dict()[k]) for k in want.keys())
        assert torch.equal(got.values(), want.values()) and got.device() == want.device()


def test_lazy_tower_kjt_and_merge_equal_their_eager_forms() -> None:
    _, example = zoo.default_dlrm()
    kjt = example[1]
    tower = ["city", "user_id", "hour"]
    got, want = ops.select_features(kjt, tower), kjt.permute([kjt.keys().index(k) for k in tower])
    assert got.to_dict().keys() == set(tower) and torch.equal(got.values(), want.values())
    assert torch.equal(got.lengths(), want.lengths()) and got.offset_per_key() == want.offset_per_key()
    weighted = KeyedJaggedTensor.from_lengths_sync(kjt.keys(), kjt.values(), kjt.lengths(),
                                                   weights=torch.rand(kjt.values().numel()))
    got, want = ops.select_features(weighted, tower), weighted.permute([kjt.keys().index(k) for k in tower])
    assert got.keys() == tower and got.stride() == want.stride() and got.length_per_key() == want.length_per_key()
    assert all(torch.equal(a, b) for a, b in zip(got.to_dict()["hour"].to_padded_dense(),
                                                 want.to_dict()["hour"].to_padded_dense()))
    assert torch.equal(got.weights(), want.weights()) and torch.equal(got.values(), want.values())
    a = torch.randn(4, 6, requires_grad=True)
    b = torch.randn(4, 4, requires_grad=True)
    parts = [KeyedTensor(["x", "z"], [2, 4], a), KeyedTensor(["y"], [4], b)]
    merged = ops.merge_keyed_tensors(parts, ["x", "y", "z"])
    columns = merged.to_dict()
    assert list(columns) == ["x", "y", "z"]
    assert torch.equal(columns["z"], a[:, 2:]) and torch.equal(columns["y"], b)
    assert torch.equal(merged.values(), torch.cat([a[:, :2], b, a[:, 2:]], dim=1))
    assert merged.device() == a.device
