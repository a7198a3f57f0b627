"""Tower-module kinds: the registry and what every kind shares.

A tower module sits between a tower's lookup and its cross-host hop. A kind is a factory
`(TowerSpec) -> nn.Module` registered under a name with `register_tower_module`; the
built-ins (identity, linear, dot, dcn) are one file each in this package and register
through that same call, so `TOWER_MODULES.names()` is the one list of kinds (CLI choices
and help texts read it).

Compressing kinds (`changes_model=True`, the default) build a module that maps the tower's
pooled embeddings concatenated in tower order, x of shape (B, W) with W = sum of the
tower's feature dims, to (B, out_width), out_width = W / c rounded up (or k whole vectors
of the interaction's dim D, k = ceil(n / c), when the global interaction works on vectors).
`CompressingTowerModule` wraps it in the graph. The identity kind (`changes_model=False`)
returns the tower's lookups unchanged and keeps the model's numerics.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import torch
import torch.nn as nn
from torchrec.sparse.jagged_tensor import KeyedTensor

from dmt_fx.ir.errors import DMTError
from dmt_fx.ir.registry import Registry


@dataclasses.dataclass(frozen=True)
class TowerSpec:
    """What a tower module factory is given."""

    index: int
    host: int
    features: tuple[str, ...]  # in the order of x's columns
    dims: tuple[int, ...]
    compression: int
    out_width: int
    vector_dim: int | None  # D when the interaction works on D-wide vectors

    @property
    def in_width(self) -> int:
        return sum(self.dims)


TowerModuleFactory = Callable[[TowerSpec], nn.Module]


@dataclasses.dataclass(frozen=True)
class TowerModuleKind:
    """A registered kind: its factory, and whether its modules change the model."""

    name: str
    factory: TowerModuleFactory
    changes_model: bool = True
    # A sequence kind reduces the tower's sequence features inside the host (sequence.py);
    # its spec lists those features only and the tower's pooled features stay as they are.
    sequences: bool = False

    def build(self, spec: TowerSpec) -> nn.Module:
        """The module the graph calls for one tower (compressing kinds are wrapped)."""
        module = self.factory(spec)
        return CompressingTowerModule(module, spec) if self.changes_model and not self.sequences else module


TOWER_MODULES: Registry[TowerModuleKind] = Registry(
    "tower-module kind", "dmt_fx.compiler.tower_modules.register_tower_module(name, factory)")


def register_tower_module(name: str, factory: TowerModuleFactory, *, changes_model: bool = True,
                          sequences: bool = False) -> TowerModuleFactory:
    """Teach dmt_fx a tower-module kind; `transform(tower_module=name)` then builds it.

    `factory(spec)` returns one module per tower mapping (B, spec.in_width) to
    (B, spec.out_width). `changes_model=False` is for modules that keep the model's
    numerics: they are called with the tower's lookups and must return them as a tuple
    (no interaction rewrite, the result is verified against the original).

    Args:
        name: the kind's name for `transform(tower_module=name)` and `--tower-module`.
        factory: `(TowerSpec) -> nn.Module`, called once per tower.
        changes_model: False only for numerics-preserving modules, as above.
        sequences: True for a sequence kind (docs/runtime.md, "Sequence tower modules"):
            `factory(spec)` then gets the tower's sequence features and returns a module
            mapping their Dict[str, JaggedTensor] to a KeyedTensor of (B, ceil(d / c)) each.

    Returns:
        `factory`, so the function can be used as a decorator.

    Raises:
        DMTError: `factory` is not callable, or `name` is not a non-empty string.

    Example:
        >>> import torch, dmt_fx
        >>> from dmt_fx.models.zoo import default_dlrm
        >>> _ = dmt_fx.register_tower_module("half", lambda spec: torch.nn.Linear(spec.in_width, spec.out_width))
        >>> model, batch = default_dlrm()
        >>> gm = dmt_fx.transform(model, "2x2", example_inputs=batch, tower_module="half", compression=2)
        >>> gm(*batch).shape, dmt_fx.tower_plan(gm).changes_model
        (torch.Size([16, 1]), True)
    """
    if not callable(factory):
        raise DMTError(f"a tower-module factory of type {type(factory).__name__}",
                       "a callable (TowerSpec) -> nn.Module", ["pass a class or a function taking a TowerSpec"])
    TOWER_MODULES.register(name, TowerModuleKind(name, factory, changes_model, sequences))
    return factory


def tower_module_kind(kind: str | TowerModuleFactory) -> TowerModuleKind:
    """The registered kind named `kind`, or an unregistered compressing kind for a factory."""
    if isinstance(kind, str):
        return TOWER_MODULES.get(kind)
    if callable(kind):
        return TowerModuleKind(getattr(kind, "__name__", type(kind).__name__), kind)
    raise DMTError(f"tower_module={kind!r}",
                   f"one of {', '.join(TOWER_MODULES.names())} or a callable (TowerSpec) -> nn.Module",
                   ["use a registered kind", "or pass a factory building one module per tower"])


def out_width(dims: tuple[int, ...], compression: int, vector_dim: int | None) -> int:
    if vector_dim is None:
        return max(1, math.ceil(sum(dims) / compression))
    return max(1, math.ceil(len(dims) / compression)) * vector_dim


class IdentityTowerModule(nn.Module):
    """The default tower module: returns the tower's lookups unchanged (numerics-preserving)."""

    def __init__(self, tower: int, features: tuple[str, ...]) -> None:
        super().__init__()
        self.tower = tower
        self.features = features

    def forward(self, *lookups: Any) -> tuple[Any, ...]:
        return lookups

    def extra_repr(self) -> str:
        return f"tower={self.tower}, features={len(self.features)}"


class CompressingTowerModule(nn.Module):
    """Adapter in the graph: concatenates the tower's lookups (KeyedTensors or tensors) in
    tower order, runs the inner module, checks its width and returns a 1-tuple."""

    def __init__(self, inner: nn.Module, spec: TowerSpec) -> None:
        super().__init__()
        self.inner, self.spec = inner, spec

    def forward(self, *lookups) -> tuple[torch.Tensor]:
        # nn.Embedding lookups of one id per sample come as (B, 1, d): flatten to (B, d).
        x = torch.cat([t.values() if isinstance(t, KeyedTensor) else t.reshape(t.shape[0], -1)
                       for t in lookups], dim=1)
        out = self.inner(x)
        if out.dim() != 2 or out.shape[1] != self.spec.out_width:
            raise DMTError(f"tower module {type(self.inner).__name__} of tower {self.spec.index} returned "
                           f"shape {tuple(out.shape)}",
                           f"(batch, {self.spec.out_width}) = the tower's width {self.spec.in_width} / "
                           f"compression {self.spec.compression}",
                           ["make the factory's module map (B, spec.in_width) to (B, spec.out_width)"])
        return (out,)
