"""train() / eval() in the captured graph: mode-dependent code runs as modules.

A traced graph fixes every `self.training` it reads at capture time: symbolic tracing takes
the Python branch it sees, and torch.export bakes `training=True/False` into each aten op
(BatchNorm's batch statistics and running-statistics updates, Dropout's masks). The DMT model
must switch like the original, so mode-dependent code is kept as calls of modules, whose
`training` flag `gm.train()` / `gm.eval()` set:

Algorithm:
  1. Find the mode-dependent submodules: torch's BatchNorm / InstanceNorm / Dropout / RReLU
     types, and every module whose forward() reads `training` (a CTR library's MLP block
     calling `F.dropout(x, p, self.training)`, nn.MultiheadAttention). The outermost such
     module holding no embedding module is kept whole.
  2. Symbolic route: those modules are leaves of the tracer (one call_module node each).
  3. Export route: each call's nodes (found by `nn_module_stack`) collapse into one
     call_module of a shallow copy of the user's module (same parameters and buffers).
  4. Both routes: a dropout function called directly (a root forward's
     `F.dropout(x, training=self.training)`, or an aten dropout export left) becomes a
     call of `ModeDropout`, which passes its own `training` flag.
  5. A batch norm left as a function with a fixed mode cannot switch: refuse it, naming
     the module and the fix.
  6. The model's own forward() may branch on `self.training` (torchrec's test models return
     (loss, pred) in train mode and pred in eval mode). When the other mode's capture is a
     different graph, the DMT model computes its capture mode only, and a call in the other
     mode raises ModeError naming the fix (a second transform in that mode).
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Callable, Iterable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from dmt_fx._compat import (
    BATCH_NORM_LEGIT_OPS,
    DropoutNd,
    NormBase,
    module_buffers,
    module_children,
    module_parameters,
    set_module_dicts,
)
from dmt_fx.compiler.support import EMBEDDING_TYPES
from dmt_fx.ir.errors import ModeError

aten = torch.ops.aten

# torch modules whose forward depends on self.training
MODE_TYPES = (DropoutNd, NormBase, nn.RReLU)

# dropout functions, each called as fn(input, p, training); the keywords torch's F.* versions take
DROPOUT_FUNCTIONS = (aten.dropout.default, aten.feature_dropout.default, aten.alpha_dropout.default,
                     aten.feature_alpha_dropout.default, torch.dropout, F.dropout, F.alpha_dropout,
                     F.feature_alpha_dropout, F.dropout1d, F.dropout2d, F.dropout3d)

# ops whose fixed training argument cannot be handed to a module here
FIXED_MODE_OPS = (aten.batch_norm.default, aten.native_batch_norm.default, aten.instance_norm.default,
                  *BATCH_NORM_LEGIT_OPS,
                  aten.rrelu.default, aten.rrelu_with_noise.default, F.batch_norm, F.instance_norm, F.rrelu)


class ModeDropout(nn.Module):
    """One dropout call with the mode read from this module's flag (set by train()/eval())."""

    def __init__(self, fn: Callable, p: float, training: bool) -> None:  # fn(input, p, training)
        super().__init__()
        self.fn, self.p = fn, p
        self.training = training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"{getattr(self.fn, '__name__', self.fn)}, p={self.p}"


def reads_training(module: nn.Module) -> bool:
    """True when the module's forward() reads `training` (source inspection; False if unknown)."""
    if isinstance(module, MODE_TYPES):
        return True
    return any(_forward_reads_training(cls) for cls in type(module).__mro__
               if "forward" in vars(cls) and cls is not nn.Module)


@functools.lru_cache(maxsize=None)
def _forward_reads_training(cls: type) -> bool:
    """Whether `cls`'s own forward reads `training` (a subclass's forward that calls
    super().forward() reads it through its base class, hence the whole MRO above). Cached
    per class, not per module: a model of 10,000 tables has one EmbeddingBag class."""
    try:
        return "training" in inspect.getsource(vars(cls)["forward"])
    except (OSError, TypeError):
        return False


def _holds_embedding(module: nn.Module) -> bool:
    return any(isinstance(m, EMBEDDING_TYPES) for m in module.modules())


def mode_modules(model: nn.Module) -> list[str]:
    """Paths of the outermost mode-dependent submodules that hold no embedding module."""
    found: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if reads_training(child) and not _holds_embedding(child):
                found.append(path)
            else:
                visit(f"{path}.", child)

    visit("", model)
    return found


def has_mode_dependent(model: nn.Module) -> bool:
    """Whether train() and eval() may compute differently (then both modes are verified)."""
    return any(reads_training(m) for m in model.modules())


# ---------------------------------------------------------------- export route


def collapse_mode_regions(model: nn.Module, gm: fx.GraphModule) -> None:
    """Step 3: each call of a mode-dependent module becomes one call_module node."""
    for path in mode_modules(model):
        for region in _calls_of(gm.graph.nodes, path):
            _collapse(gm, path, model.get_submodule(path), region)


def _calls_of(nodes: Iterable[fx.Node], path: str) -> list[list[fx.Node]]:
    """The nodes of each call of the module at `path` (one `nn_module_stack` key per call)."""
    calls: dict[str, list[fx.Node]] = {}
    for node in nodes:
        if node.op in ("placeholder", "get_attr", "output"):
            continue
        for key, entry in node.meta.get("nn_module_stack", {}).items():
            if entry[0] == path:
                calls.setdefault(key, []).append(node)
                break
    return list(calls.values())


def _collapse(gm: fx.GraphModule, path: str, module: nn.Module, region: list[fx.Node]) -> None:
    inside = set(region)
    inputs = {a for n in region for a in n.all_input_nodes if a not in inside and a.op != "get_attr"}
    outputs = [n for n in region if any(u not in inside for u in n.users)]
    if len(inputs) != 1 or len(outputs) != 1:
        return  # not a one-tensor call: its dropouts are still switched (step 4), a batch norm refused (5)
    _install(gm, path, _shallow_copy(module))
    with gm.graph.inserting_before(outputs[0]):
        call = gm.graph.call_module(path, (inputs.pop(),))
    call.meta.update({k: v for k, v in outputs[0].meta.items() if k in ("nn_module_stack", "val")})
    outputs[0].replace_all_uses_with(call)
    for node in reversed(region):
        gm.graph.erase_node(node)
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)


def _shallow_copy(module: nn.Module) -> nn.Module:
    """The user's module with its own mode flag but the same parameters and buffers, so the
    DMT model's train()/eval() never flips a module of the user's model."""
    clone = copy.copy(module)
    children = {name: _shallow_copy(child) for name, child in module_children(module).items() if child is not None}
    set_module_dicts(clone, dict(module_parameters(module)), dict(module_buffers(module)), children)
    return clone


def _install(gm: fx.GraphModule, path: str, module: nn.Module) -> None:
    *owners, leaf = path.split(".")
    target: nn.Module = gm
    for name in owners:
        if not hasattr(target, name):
            target.add_module(name, nn.Module())
        target = getattr(target, name)
    setattr(target, leaf, module)


# ---------------------------------------------------------------- both routes


def switch_dropout_calls(model: nn.Module, gm: fx.GraphModule) -> None:
    """Step 4: a dropout function called by a forward() that reads `training` (its flag was
    fixed at capture) becomes a ModeDropout call. A dropout applied in every mode stays."""
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in DROPOUT_FUNCTIONS
             and n.args and reads_training(_owner_module(model, n))]
    for index, node in enumerate(calls):
        p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
        flag = node.args[2] if len(node.args) > 2 else node.kwargs.get("training", node.kwargs.get("train", True))
        name = f"_dmt_dropout_{index}"
        gm.add_module(name, ModeDropout(node.target, p, bool(flag)))
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(name, (node.args[0],))
        call.meta.update(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)


def refuse_fixed_modes(model: nn.Module, gm: fx.GraphModule) -> None:
    """Step 5: a batch norm (or rrelu) function left in the graph, called by a forward() that
    reads `training`, has its capture mode fixed."""
    fixed = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in FIXED_MODE_OPS
             and reads_training(_owner_module(model, n))]
    if not fixed:
        return
    where = sorted({_owner(n) for n in fixed})
    raise ModeError(
        f"mode-dependent functions ({', '.join(sorted({_name(n.target) for n in fixed}))}) called in "
        f"forward() of {', '.join(where)}, not through a module: the captured graph would keep the "
        "capture mode, and train()/eval() would not switch them",
        "batch norm through a module (nn.BatchNorm1d, ...) or in a submodule that takes one tensor",
        ["replace F.batch_norm(x, ..., training=self.training) by an nn.BatchNorm1d module",
         "or move that code into a small submodule whose forward(x) takes one tensor (kept whole)"])


def _owner_path(node: fx.Node) -> str:
    stack = list(node.meta.get("nn_module_stack", {}).values())
    return stack[-1][0] if stack else ""


def _owner_module(model: nn.Module, node: fx.Node) -> nn.Module:
    try:
        return model.get_submodule(_owner_path(node))
    except AttributeError:
        return model


def _owner(node: fx.Node) -> str:
    stack = list(node.meta.get("nn_module_stack", {}).values())
    return repr(stack[-1][0]) if stack and stack[-1][0] else "the model"


def _name(target: Callable) -> str:
    return getattr(target, "__name__", str(target))


# ---------------------------------------------------------------- the model's own forward


def root_reads_training(model: nn.Module) -> bool:
    """Whether the model's own forward() reads `training` (not a submodule's)."""
    return reads_training(model) and not isinstance(model, MODE_TYPES)


class ModeGuard:
    """A forward pre-hook: the DMT model runs only in the mode it was captured in (step 6)."""

    def __init__(self, training: bool, model_name: str) -> None:
        self.training, self.model_name = training, model_name

    def __call__(self, module: nn.Module, args: tuple) -> None:
        if module.training != self.training:
            captured, called = ("train", "eval") if self.training else ("eval", "train")
            raise ModeError(
                f"the DMT model of {self.model_name} called in {called} mode; {self.model_name}.forward() "
                f"branches on self.training itself, and the graph was captured in {captured} mode",
                f"calls in {captured} mode (the mode the model was in at transform time)",
                [f"transform the model once more in {called} mode for those calls: "
                 f"dmt_fx.transform(model.{called}(), ...) (the two DMT models share the parameters)",
                 "or move the mode-dependent code of forward() into a submodule (kept whole)"])
