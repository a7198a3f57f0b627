"""Batch classes that are not pytree nodes (a dict subclass, a Mapping, a dataclass).

Each model takes an int from a shape, so symbolic tracing fails and torch.export captures
it; dmt_fx registers the batch class as a pytree node first. Checked: the route, bitwise
outputs and gradients against the original in one process, and for a class dmt_fx cannot
rebuild safely a refusal whose quoted registration lines, run, make the model transform."""

from __future__ import annotations

import collections.abc
import copy
import textwrap
from typing import Any, Callable, Iterator

import pytest
import torch
import torch.nn as nn
from torch.utils import _pytree as pytree

import dmt_fx
from dmt_fx.compiler.capture import capture
from tests.harness.corpus.ctr_inputs import (
    MappingBatchModel,
    dict_batch_model,
    features,
    frozen_batch_model,
    mapping_batch_model,
)


def _exact(build: Callable[[int], tuple[nn.Module, tuple[Any, ...]]]) -> None:
    model, inputs = build(0)
    pristine = copy.deepcopy(model)
    gm = dmt_fx.transform(model, "2x2", example_inputs=inputs)
    assert capture(copy.deepcopy(pristine), inputs)[1] == "export"
    _, other = build(1)  # another batch of the same class: the graph is not fixed to the example
    for batch in (inputs, other):
        expected, got = pristine(*batch), gm(*batch)
        expected.sum().backward()
        got.sum().backward()
        assert torch.equal(expected, got)
    grads = [(p.grad, q.grad) for p, q in zip(pristine.parameters(), model.parameters())]
    assert all(a is not None and torch.equal(a, b) for a, b in grads)


@pytest.mark.parametrize("build", [dict_batch_model, mapping_batch_model, frozen_batch_model],
                         ids=["dict-subclass", "Mapping", "frozen-dataclass"])
def test_batch_class_transforms_exactly(build: Callable) -> None:
    _exact(build)


class PositionalMapping(collections.abc.Mapping):
    """A Mapping built from two positional tensors: no constructor takes its items."""

    def __init__(self, dense: torch.Tensor, ids: torch.Tensor, *, tag: str) -> None:
        self._items = {"dense": dense, "ids": ids}
        self.tag = tag

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class LabelledDict(dict):
    """A dict subclass holding a tensor outside its items: flattening would lose it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.labels = torch.zeros(3)


def test_a_class_it_cannot_rebuild_is_refused_with_the_registration_to_write() -> None:
    batch = PositionalMapping(**features(0), tag="x")
    with pytest.raises(dmt_fx.DMTError, match="register_pytree_node") as info:
        dmt_fx.transform(MappingBatchModel(0), "2x2", example_inputs=(batch,))
    text = str(info.value)
    assert "PositionalMapping(mapping)" in text and "Traceback" not in text
    # the quoted lines are the fix: adapted to this constructor, they make it transform exactly
    start = text.rindex("\n", 0, text.index("from torch.utils")) + 1
    lines = textwrap.dedent(text[start:]).replace(
        "PositionalMapping(**dict(zip(keys, values)))", "PositionalMapping(*values, tag='x')")
    exec(lines, {"PositionalMapping": PositionalMapping})
    try:
        _exact(lambda seed: (MappingBatchModel(seed), (PositionalMapping(**features(seed), tag="x"),)))
    finally:
        pytree.SUPPORTED_NODES.pop(PositionalMapping, None)


def test_a_tensor_outside_the_items_is_refused() -> None:
    batch = LabelledDict(features(0))
    with pytest.raises(dmt_fx.DMTError, match=r"attributes \['labels'\] hold tensors outside its items"):
        dmt_fx.transform(MappingBatchModel(0), "2x2", example_inputs=(batch,))
    assert LabelledDict not in pytree.SUPPORTED_NODES
