"""The one single-process equivalence checker: the original model against its transform.

`transform` shares the model's parameters, so the original is always a copy taken BEFORE the
transform (`ref` / `pristine` below).

- Bitwise (identity towers only re-route ids and slice/concatenate pooled outputs, so every
  kernel sees the same numbers in the same order): `assert_bitwise_equivalent(ref, gm, batch)`
  (one forward and backward of the sum of the outputs), built from `assert_same_outputs`,
  `assert_grads_equal` (gradients keyed by state_dict key) and `assert_state_dicts_equal`.
- Within TOLERANCE, in each mode the model may run in: `check_equivalence(model, pristine, gm,
  inputs)`: from the same state and the same RNG seed, one forward and backward of the
  original (a copy of `pristine`) and of the DMT model `gm` (which shares `model`'s
  parameters) in the capture mode, and in the other mode when the model has mode-dependent
  modules; outputs, gradients and buffers (batch-norm running statistics). Used by the corpus
  and by the property tests.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
from torch.utils import _pytree as pytree

from dmt_fx.compiler.modes import has_mode_dependent

TOLERANCE = 1e-6


def tensor_leaves(out: Any) -> list[torch.Tensor]:
    return [x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor)]


def assert_same_outputs(expected: Any, got: Any) -> None:
    """Every tensor leaf of `got` equals `expected`'s, bitwise, with its shape and dtype."""
    e, g = tensor_leaves(expected), tensor_leaves(got)
    assert len(e) == len(g) and e, "different output structure"
    for a, b in zip(e, g):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.equal(a, b), f"outputs differ (max abs diff {(a - b).abs().max().item():.3g})"


def grads_by_key(module: nn.Module) -> dict[str, torch.Tensor | None]:
    """Gradient of every parameter, keyed by the module's state_dict key.

    `state_dict(keep_vars=True)` returns the Parameter objects themselves, and a model
    made by dmt_fx.transform renames its keys to the original model's, so the grads of a
    transformed model and of (a copy of) the original can be compared key by key."""
    return {k: v.grad for k, v in module.state_dict(keep_vars=True).items() if isinstance(v, nn.Parameter)}


def assert_grads_equal(expected: nn.Module, got: nn.Module) -> None:
    want, have = grads_by_key(expected), grads_by_key(got)
    assert list(have) == list(want), "parameter keys differ"
    for key, g in want.items():
        h = have[key]
        if g is None or h is None:
            assert g is None and h is None, f"grad of {key}: one is None"
            continue
        # Bitwise: every table sees the same lookups in the same order, so the backward
        # sums the same numbers in the same order.
        assert torch.equal(g, h), f"grad of {key} differs (max abs diff {(g - h).abs().max().item():.3g})"


def assert_state_dicts_equal(expected: dict, got: dict) -> None:
    assert list(got) == list(expected), "state_dict keys (or their order) differ"
    for k, v in expected.items():
        assert torch.equal(v, got[k]), f"state_dict[{k!r}] differs"


def assert_bitwise_equivalent(ref: nn.Module, gm: nn.Module, batch: tuple) -> None:
    """One forward of `batch` and one backward of the sum of every output: the outputs and
    every parameter gradient of `gm` equal `ref`'s, bitwise."""
    expected, got = ref(*batch), gm(*batch)
    assert_same_outputs(expected, got)
    sum(e.sum() for e in tensor_leaves(expected)).backward()
    sum(g.sum() for g in tensor_leaves(got)).backward()
    assert_grads_equal(ref, gm)


def float_leaves(out: Any) -> list[torch.Tensor]:
    return [x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor) and x.is_floating_point()]


def run_backward(model: nn.Module, inputs: tuple) -> list[torch.Tensor]:
    """Outputs of one forward and backward (of the sum of every differentiable output)."""
    out = float_leaves(model(*inputs))
    loss = sum(o.sum() for o in out if o.requires_grad)
    loss.backward()
    return [o.detach() for o in out]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b)), "different structure"
    return max([(x.double() - y.double()).abs().max().item() for x, y in zip(a, b) if x.numel()] or [0.0])


def _grads(model: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
    """Names (a sparse gradient's marked: its layout must match too) and dense values."""
    named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    return ([n + (" (sparse)" if g.is_sparse else "") for n, g in named],
            [g.to_dense() if g.is_sparse else g for _, g in named])


def modes_to_check(pristine: nn.Module, gm: nn.Module) -> list[bool]:
    """The capture mode, and the other one when the model has mode-dependent modules (unless its
    own forward branches on self.training: then the DMT model refuses the other mode)."""
    modes = [pristine.training]
    if has_mode_dependent(pristine) and "dmt_one_mode" not in gm.meta:
        modes.append(not pristine.training)
    return modes


def _buffers(model: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
    named = list(model.named_buffers())
    return [n for n, _ in named], [b.detach().double() for _, b in named]


def check_equivalence(model: nn.Module, pristine: nn.Module, gm: nn.Module, inputs: tuple) -> str:
    """One forward and backward in each mode to check, from the same state and the same RNG
    seed: outputs, gradients and buffers (batch-norm running statistics) as the original's."""
    worst = 0.0
    for training in modes_to_check(pristine, gm):
        worst = max(worst, _check_mode(model, pristine, gm, inputs, training))
    model.load_state_dict(pristine.state_dict())
    model.train(pristine.training)
    gm.train(pristine.training)
    return "bitwise" if worst == 0 else f"<= 1e-6 ({worst:.1g})"


def _check_mode(model: nn.Module, pristine: nn.Module, gm: nn.Module, inputs: tuple, training: bool) -> float:
    model.load_state_dict(pristine.state_dict())  # gm shares the model's parameters and buffers
    for p in model.parameters():
        p.grad = None
    ref = copy.deepcopy(pristine).train(training)
    gm.train(training)
    torch.manual_seed(0)
    expected = run_backward(ref, inputs)
    torch.manual_seed(0)
    got = run_backward(gm, inputs)
    ref_names, ref_grads = _grads(ref)
    names, grads = _grads(model)
    mode = "train" if training else "eval"
    assert names == ref_names and ref_grads, f"{mode}: gradients of {sorted(set(names) ^ set(ref_names))} differ"
    ref_buffer_names, ref_buffers = _buffers(ref)
    buffer_names, buffers = _buffers(model)
    assert buffer_names == ref_buffer_names, f"{mode}: buffers {sorted(set(buffer_names) ^ set(ref_buffer_names))}"
    diffs = max_diff(expected, got), max_diff(ref_grads, grads), max_diff(ref_buffers, buffers)
    assert max(diffs) <= TOLERANCE, f"{mode} mode: outputs, gradients, buffers differ by {diffs}"
    return max(diffs)
