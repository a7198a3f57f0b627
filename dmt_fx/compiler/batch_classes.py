"""Batch classes that are not pytree nodes: make torch.export able to flatten them.

CTR libraries hand a batch over as an object of their own: a dataclass, a subclass of
dict, or a `collections.abc.Mapping` over some storage. torch.export flattens inputs with
pytree and refuses a type it does not know ("Unsupported input type"). `register_batch_classes`
walks one example batch and registers, process-wide as torch's own registrations are:

  1. a dataclass with `torch.export.register_dataclass` (its fields are its children);
  2. a dict-like (dict subclass, Mapping) with `register_pytree_node`: children the values,
     context the keys, rebuilt by the class's own constructor (`cls(mapping)` or
     `cls(**mapping)`), the first that rebuilds the example with the same items.

A dict-like is registered only when that is safe: some constructor rebuilds it, and the
object holds no tensor outside its items (flattening would lose it, an attribute fixed at
the example's value). Otherwise a CaptureError names the registration to write.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping
from typing import Any, Callable

import torch

from dmt_fx._compat import pytree
from dmt_fx.ir.errors import CaptureError

# dict types pytree knows natively: their dynamic shapes are written like the inputs
BUILTIN_DICTS = (dict, collections.OrderedDict, collections.defaultdict)


def is_user_node(value: Any) -> bool:
    """A batch class registered as a pytree node (here or by the user), not a built-in container."""
    kind = type(value)
    return kind in pytree.SUPPORTED_NODES and kind not in (*BUILTIN_DICTS, list, tuple) \
        and not (isinstance(value, tuple) and hasattr(kind, "_fields"))


def register_batch_classes(value: Any) -> None:
    """Register every dataclass and dict-like type in `value` that pytree does not know yet."""
    kind = type(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if kind not in pytree.SUPPORTED_NODES:
            torch.export.register_dataclass(kind)
        children: Any = [getattr(value, f.name) for f in dataclasses.fields(value)]
    elif isinstance(value, Mapping):
        if kind not in pytree.SUPPORTED_NODES:
            _register_mapping(value)
        children = list(value.values())
    elif isinstance(value, (list, tuple)):
        children = list(value)
    else:
        return
    for child in children:
        register_batch_classes(child)


def _register_mapping(example: Mapping) -> None:
    kind = type(example)
    rebuild = _constructor(example)
    lost = _tensors_outside_items(example)
    if rebuild is None or lost:
        why = (f"its attributes {lost} hold tensors outside its items" if lost else
               f"neither {kind.__name__}(mapping) nor {kind.__name__}(**mapping) rebuilds it")
        raise CaptureError(
            f"the batch class {kind.__module__}.{kind.__qualname__} is not a pytree node, and "
            f"dmt_fx cannot register it for you: {why}",
            "inputs torch.export can flatten (tensors in tuples, lists, dicts, dataclasses or registered classes)",
            [f"register it before dmt_fx.transform:\n{registration_lines(kind)}"])

    def flatten(batch: Mapping) -> tuple[list, list]:
        return list(batch.values()), list(batch.keys())

    def unflatten(values: Any, keys: Any) -> Mapping:
        return rebuild(dict(zip(keys, values)))

    def flatten_with_keys(batch: Mapping) -> tuple[list, list]:  # torch.export names each input by it
        return [(pytree.MappingKey(k), v) for k, v in batch.items()], list(batch.keys())

    pytree.register_pytree_node(kind, flatten, unflatten, flatten_with_keys_fn=flatten_with_keys,
                                serialized_type_name=f"{kind.__module__}.{kind.__qualname__}")


def registration_lines(kind: type) -> str:
    """The lines a user writes to register a dict-like batch class (the refusal quotes them)."""
    name = kind.__name__
    return ("    from torch.utils import _pytree as pytree\n"
            "    pytree.register_pytree_node(\n"
            f"        {name},\n"
            "        lambda batch: (list(batch.values()), list(batch.keys())),\n"
            f"        lambda values, keys: {name}(**dict(zip(keys, values))),  # build one from its items\n"
            "        flatten_with_keys_fn=lambda batch: (\n"
            "            [(pytree.MappingKey(k), v) for k, v in batch.items()], list(batch.keys())),\n"
            "    )")


def _constructor(example: Mapping) -> Callable[[dict], Mapping] | None:
    """The first way to build the class from a dict that rebuilds `example` item for item."""
    kind = type(example)
    items = dict(example.items())
    for build in (lambda d: kind(d), lambda d: kind(**d)):
        try:
            rebuilt = build(items)
        except Exception:  # a constructor of another signature: try the next way
            continue
        same = type(rebuilt) is kind and list(rebuilt.keys()) == list(items) \
            and all(rebuilt[k] is v for k, v in items.items())
        if same:
            return build
    return None


def _tensors_outside_items(example: Mapping) -> list[str]:
    """Attributes of `example` holding tensors that are not among its items' values."""
    inside = {id(t) for t in pytree.tree_leaves(list(example.values())) if isinstance(t, torch.Tensor)}
    state = getattr(example, "__dict__", {})
    return [name for name, attr in state.items()
            if any(isinstance(t, torch.Tensor) and id(t) not in inside for t in pytree.tree_leaves(attr))]
