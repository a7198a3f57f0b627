"""Build a TARGET fast when it builds on the meta device: skip initialising meta tensors.

A module built on meta still runs its initialiser: `nn.EmbeddingBag.__init__` calls
`reset_parameters`, whose `normal_` on a meta tensor goes through torch's Python reference
implementation (decompositions, about 1 ms a table on a quiet machine, 80% of `dmt-fx plan`
at 10,000 features), only to produce a tensor without values. `skip_meta_init` is a torch
function mode that returns such calls' tensor unchanged when every tensor argument is on
meta: nothing observable changes (a meta tensor has shape, dtype and device, never values;
the ops below change values only), and a real tensor is initialised as before.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.init as init
from torch.overrides import TorchFunctionMode

from dmt_fx._compat import pytree

# Value-only initialisers: they write values in place and change no metadata (unlike
# resize_, transpose_ or requires_grad_, which a meta tensor must still see).
_INIT_FUNCTIONS = tuple(getattr(init, name) for name in (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "xavier_uniform_",
    "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_") if hasattr(init, name))
_INIT_METHODS = tuple(getattr(torch.Tensor, name) for name in (
    "normal_", "uniform_", "fill_", "zero_", "random_", "exponential_", "bernoulli_", "log_normal_", "cauchy_",
    "geometric_"))
_SKIPPED = frozenset(_INIT_FUNCTIONS + _INIT_METHODS)


class SkipMetaInit(TorchFunctionMode):
    """Initialisers of meta tensors return their tensor untouched; everything else runs."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped = 0

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _SKIPPED:
            target = args[0] if args else kwargs.get("tensor", kwargs.get("self"))  # nn.init passes tensor=
            tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            if isinstance(target, torch.Tensor) and all(t.is_meta for t in tensors):
                self.skipped += 1
                return target
        return func(*args, **kwargs)


def skip_meta_init() -> SkipMetaInit:
    """`with skip_meta_init(): model = factory()` (the mode counts what it skipped)."""
    return SkipMetaInit()
