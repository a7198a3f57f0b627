"""Error texts read as written: numbered alternatives, one line without "or or"."""

from __future__ import annotations

import pytest

import dmt_fx
from dmt_fx.ir.errors import DMTError
from dmt_fx.models.zoo import default_dlrm


def test_alternatives_never_read_or_or() -> None:
    error = DMTError("x found", "y", ["do a", "or do b"])
    assert error.fixes == ("do a", "do b")
    assert "or or" not in error.one_line() and "do a or do b" in error.one_line()
    assert "2) do b" in str(error)


def test_a_raised_refusal_reads_once() -> None:
    """A registry's refusal lists "pick one" and "register yours" as two alternatives."""
    model, inputs = default_dlrm()
    with pytest.raises(DMTError) as info:
        dmt_fx.transform(model, "2x2", example_inputs=inputs, tower_module="no_such_kind")
    assert "or or" not in info.value.one_line(), info.value.one_line()
