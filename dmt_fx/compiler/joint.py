"""Joint tables: one embedding weight for all fields, indexed with per-field row offsets.

CTR libraries (torchfm's FeaturesEmbedding) and NVIDIA's DLRM ("joint" mode) keep every
field in one `nn.Embedding` and add constant offsets to a `[B, F]` id tensor in forward:
`emb(x + offsets)`. Field f then reads rows [o_f, o_f+1) of the weight (the last field up to
the end), so the table splits by field into row ranges, one partition unit each.

Algorithm (`joint_offsets`, for one `nn.Embedding` / `aten.embedding` lookup):
  1. The ids must be an addition `a + b` of two graph values; anything else is no joint table.
  2. Evaluate each side as a constant: buffers and tensor constants, python values, and ops
     on constants (`offsets[:-1]`, `.unsqueeze(0)`, `x.new_tensor((0, 5, 12))`, whose value
     does not depend on x's data). A placeholder (data) or a parameter (learned) is not one.
  3. The constant side is the offsets: F >= 2 integers along the ids' last dimension,
     starting at 0, strictly increasing, below the table's row count. Otherwise, and when
     no side is constant, the table stays whole and the reason becomes a plan warning.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

_ADDS = {operator.add, operator.iadd, torch.add, torch.Tensor.add, torch.ops.aten.add.Tensor}
_DATA_FREE = {"new_tensor", "new_zeros", "new_ones", "new_full"}  # read only dtype/device of self
_MAX_DEPTH = 32


@dataclasses.dataclass(frozen=True)
class JointOffsets:
    """The verdict on one lookup whose ids are a sum: its row offsets, or why it stays whole."""

    offsets: tuple[int, ...] = ()  # per field, when the split applies
    reason: str = ""  # why the table stays whole ("" when it splits)

    @property
    def splits(self) -> bool:
        return bool(self.offsets)


def ids_of(node: fx.Node) -> Any:
    """The ids argument of an `nn.Embedding` call or an `aten.embedding` node."""
    if node.op == "call_module":
        return node.args[0] if node.args else node.kwargs.get("input")
    return node.args[1] if len(node.args) > 1 else node.kwargs.get("indices")


def joint_offsets(gm: fx.GraphModule, node: fx.Node, num_rows: int) -> JointOffsets | None:
    """None when the lookup's ids are not `ids + something` (not a joint table)."""
    ids = ids_of(node)
    if not (isinstance(ids, fx.Node) and _is_add(ids)):  # Step 1
        return None
    sides = [a for a in (ids.args[0], ids.args[1] if len(ids.args) > 1 else ids.kwargs.get("other"))]
    if not all(isinstance(a, fx.Node) for a in sides):
        return None  # ids + a python number: one shift for every field, no per-field offsets
    values = [_constant(gm, a, 0) for a in sides]  # Step 2
    constant = [i for i, (value, _) in enumerate(values) if value is not None]
    if len(constant) != 1:
        if constant:
            return None  # both sides constant: no ids at all
        return JointOffsets(reason=f"the offsets added to its ids ({sides[1].name}) are not constants: "
                                   f"{values[1][1]}")
    return _check(values[constant[0]][0], sides[constant[0]].name, num_rows)  # Step 3


def _check(value: Any, name: str, num_rows: int) -> JointOffsets | None:
    offsets = torch.as_tensor(value)
    if offsets.numel() < 2 or any(s != 1 for s in offsets.shape[:-1]):
        return None  # one shift for every id: not per-field offsets
    if offsets.is_floating_point() or offsets.is_complex():
        return JointOffsets(reason=f"the offsets {name} are not integers ({offsets.dtype})")
    values = tuple(int(v) for v in offsets.reshape(-1).tolist())
    increasing = all(a < b for a, b in zip(values, values[1:]))
    if values[0] != 0 or not increasing or values[-1] >= num_rows:
        return JointOffsets(reason=f"the constant offsets {list(values)} ({name}) do not cut rows 0..{num_rows - 1} "
                                   "into increasing per-field ranges starting at 0")
    return JointOffsets(offsets=values)


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in ("add", "__add__")
    return node.op == "call_function" and node.target in _ADDS


def _fetch(gm: nn.Module, target: str) -> Any:
    value: Any = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _constant(gm: fx.GraphModule, arg: Any, depth: int) -> tuple[Any, str]:
    """(value, "") when `arg` is a constant, else (None, why not)."""
    if isinstance(arg, (list, tuple)):
        items = [_constant(gm, a, depth) for a in arg]
        bad = [why for value, why in items if value is None and why]
        return (None, bad[0]) if bad else (type(arg)(v for v, _ in items), "")
    if not isinstance(arg, fx.Node):
        return arg, ""
    if depth > _MAX_DEPTH:
        return None, f"{arg.name} is too deep a computation to evaluate"
    if arg.op == "placeholder":
        return None, f"computed from the input {arg.target!r} (data)"
    if arg.op == "get_attr":
        value = _fetch(gm, str(arg.target))
        if isinstance(value, nn.Parameter):
            return None, f"{arg.target!r} is a parameter (a learned value)"
        return value, ""
    if arg.op == "call_module":
        return None, f"computed by the module {arg.target!r}"
    if arg.op == "call_method" and arg.target in _DATA_FREE:
        return _evaluate(gm, arg, depth, self_free=True)
    if arg.op in ("call_function", "call_method"):
        return _evaluate(gm, arg, depth, self_free=False)
    return None, f"{arg.name} ({arg.op})"


def _evaluate(gm: fx.GraphModule, node: fx.Node, depth: int, *, self_free: bool) -> tuple[Any, str]:
    args, why = _constant(gm, tuple(node.args[1:] if self_free else node.args), depth + 1)
    if why:
        return None, why
    kwargs, why = _constant(gm, tuple(node.kwargs.values()), depth + 1)
    if why:
        return None, why
    kw = dict(zip(node.kwargs, kwargs))
    try:
        if self_free:  # x.new_tensor(c): the value of c, x gives only dtype and device
            return getattr(torch.empty(0, dtype=torch.long), str(node.target))(*args, **kw), ""
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kw), ""
        return node.target(*args, **kw), ""
    except Exception as exc:  # an op we cannot evaluate on its own is not a constant we know
        return None, f"{node.name} cannot be evaluated at transform time ({type(exc).__name__})"
