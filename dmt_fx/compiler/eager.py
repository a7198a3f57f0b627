"""Eager runs of the user's model for what the compiler measures (pooling, affinity, checks).

One place that runs the model in eval mode without gradients, removes the hooks it was
given, and turns a failing run into an ExampleInputsError.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from dmt_fx.ir.errors import DMTError, ExampleInputsError


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Eval mode for a check run (no dropout, no BatchNorm updates), then restore every flag."""
    flags = [(m, m.training) for root in modules for m in root.modules()]
    try:
        for m, _ in flags:  # not .eval(): exported modules refuse it
            m.training = False
        yield
    finally:
        for m, training in flags:
            m.training = training


def run_with_hooks(model: nn.Module, inputs: tuple, handles: list, extra_fix: str | None = None) -> Any:
    """One eager, eval-mode, no-grad run of the user's model for its hooks; the hooks are
    removed afterwards and a failing run becomes an ExampleInputsError. Returns the output."""
    with hooked_runs(model, inputs, handles, extra_fix) as run:
        return run()


@contextlib.contextmanager
def hooked_runs(model: nn.Module, inputs: tuple, handles: list,
                extra_fix: str | None = None) -> Iterator[Callable[[], Any]]:
    """Yields run(): an eager, eval-mode, no-grad call model(*inputs), as often as wanted
    (the hooks may change what each call sees). Hooks are removed on exit, and a failing
    call becomes an ExampleInputsError."""

    def run() -> Any:
        try:
            with torch.no_grad():
                return model(*inputs)
        except DMTError:
            raise
        except Exception as exc:
            raise ExampleInputsError(
                f"the model fails on example_inputs: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}",
                "example_inputs = one batch the original model accepts, as a tuple of forward()'s positional arguments",
                ["call model(*example_inputs) yourself to see the failure", *([extra_fix] if extra_fix else [])],
            ) from exc

    try:
        with eval_mode(model):
            yield run
    finally:
        for handle in handles:
            handle.remove()
