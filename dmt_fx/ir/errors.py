"""User-facing errors.

Every error says what was found, what was expected and how to fix it, in that order,
ending with numbered remedies (the torchrec style). `assert` is kept for internal
invariants only; anything a user can cause raises a `DMTError` subclass.
"""

from __future__ import annotations

from typing import Sequence


class DMTError(ValueError):
    """Base class of every error dmt_fx raises for bad input.

    Every message says what was found, what was expected and, numbered, how to fix it;
    subclasses (`TopologyError`, `PlanError`, `CaptureError`, ...) name the kind of input.

    Args:
        found: what the input was.
        expected: what it should have been.
        fixes: remedies, alternatives to each other.

    Raises:
        Nothing itself: it is what dmt_fx raises; catch `DMTError` for all of them.

    Example:
        >>> import dmt_fx
        >>> try:
        ...     dmt_fx.Topology(0, 4)
        ... except dmt_fx.DMTError as err:
        ...     print(err.one_line())
        num_hosts=0; expected num_hosts a positive int; fix: pass e.g. Topology(num_hosts=2, local_world_size=4) or Topology.parse('2x4')
    """

    def __init__(self, found: str, expected: str, fixes: Sequence[str] = ()) -> None:
        self.found = found
        self.expected = expected
        # the remedies are alternatives already (numbered, or joined with "or" on one line):
        # a remedy's own leading "or " would be said twice
        self.fixes = tuple(fix.removeprefix("or ") for fix in fixes)
        lines = [f"found: {found}", f"expected: {expected}"]
        if self.fixes:
            lines.append("Possible solutions:")
            lines += [f"  {i}) {fix}" for i, fix in enumerate(self.fixes, 1)]
        super().__init__("\n".join(lines))

    def one_line(self) -> str:
        """The whole message on one line (the CLI's form)."""
        fixes = " or ".join(self.fixes)
        return f"{self.found}; expected {self.expected}" + (f"; fix: {fixes}" if fixes else "")


class TopologyError(DMTError):
    """The topology is invalid or does not match the world."""


class CaptureError(DMTError):
    """The model could not be captured into a graph."""


class ModeError(DMTError):
    """A train / eval mode the captured graph cannot follow: refused at capture (a batch norm
    function whose mode the graph would fix) or at call time (a forward branching on it)."""


class NoEmbeddingError(DMTError):
    """The model has no embedding lookup to put into towers."""


class UnsupportedEmbeddingError(DMTError):
    """The model uses an embedding module dmt_fx does not rewrite."""


class NoInteractionError(DMTError):
    """No node joins the embedding outputs with the dense path."""


class PlanError(DMTError):
    """A tower plan is malformed or does not fit this model and topology."""


class ExampleInputsError(DMTError):
    """The example inputs do not fit the model."""


class PassError(DMTError):
    """A graph pass failed; wraps the underlying error with the pass name."""
