"""Capture an unmodified model into a torch.fx GraphModule.

Algorithm:
  1. Refuse models holding embedding modules we cannot rewrite (sharded, quantized,
     sequence collections; decided by type in support.py) and models with no embedding
     module at all.
  2. Route "symbolic": torchrec's fx tracer with embedding collections, embedding bags and
     the modules registered interaction kinds recognise (torchrec's arches) as leaves. Works for TorchRec models and plain models
     written with explicit tensor arguments.
  3. Route "export": when symbolic tracing fails (Python loops over lists of tensors, ints
     from shapes, index lists built in forward) and `example_inputs` are given,
     non-strict `torch.export` with every input dimension `Dim.AUTO`, then `.module()`.
     Embedding lookups become aten ops tagged with their module path in `nn_module_stack`.
  4. A torchrec model whose forward() iterates over a KeyedJaggedTensor argument's keys
     (`for key in kjt.keys()`: torchrec's own BERT4Rec example does) is traced again with
     those keys fixed to the example batch's (`kjt.keys()` returns them as a list); the
     graph then checks every call's keys (`StaticKeys`), so a batch with other keys is
     refused rather than read wrongly.
  5. Otherwise raise a CaptureError naming the user's line that broke tracing.
  6. Buffers that are not in the model's state dict (constants) become non-persistent.
Functional lookups (`F.embedding_bag(ids, self.weight_q, ...)`, the reference DLRM's
quotient-remainder bags) are not modules a tracer can keep whole: a symbolic graph that
calls them is captured again by torch.export, whose aten ops name each table's parameter.
"""

from __future__ import annotations

import inspect
import traceback
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.export import Dim
from torchrec.fx.tracer import Tracer
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dmt_fx._compat import ConvNd, pytree
from dmt_fx.compiler.batch_classes import is_user_node, register_batch_classes
from dmt_fx.compiler.interactions import keeps_whole
from dmt_fx.compiler.modes import (
    ModeGuard,
    collapse_mode_regions,
    mode_modules,
    refuse_fixed_modes,
    root_reads_training,
    switch_dropout_calls,
)
from dmt_fx.compiler.support import EMBEDDING_TYPES, check_supported
from dmt_fx.compiler.validation import InputValidationError
from dmt_fx.ir.errors import CaptureError, DMTError, ModeError, NoEmbeddingError

# Lookups written as functions on a parameter: torch.fx records them as call_function nodes.
FUNCTIONAL_LOOKUPS = (F.embedding, F.embedding_bag, torch.embedding, torch.embedding_bag)


class _DMTTracer(Tracer):
    """Embedding modules stay whole (the analysis finds them as calls), and so do the modules
    an interaction kind recognises by structure (e.g. torchrec's arches, or copies of them)."""

    def __init__(self, whole: set[int], static_keys: dict[str, tuple[str, ...]] | None = None) -> None:
        super().__init__()
        self.whole = whole  # ids of the modules interaction kinds keep whole
        self.static_keys = static_keys or {}  # forward argument -> its KJT keys, fixed (step 4)

    def keys(self, obj: torch.fx.Proxy) -> Any:
        node = obj.node
        if node.op == "placeholder" and node.target in self.static_keys:
            return list(self.static_keys[str(node.target)])
        return super().keys(obj)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (isinstance(m, EMBEDDING_TYPES) or id(m) in self.whole
                or super().is_leaf_module(m, module_qualified_name))

    def create_arg(self, a: Any) -> Any:
        # CTR libraries keep constants as numpy arrays read in forward (`x.new_tensor(self.offsets)`):
        # a numpy array becomes a tensor constant of the graph, a numpy scalar a Python number.
        if isinstance(a, np.ndarray):
            a = torch.from_numpy(a.copy())
        elif isinstance(a, np.generic):
            a = a.item()
        return super().create_arg(a)


def symbolic_capture(model: nn.Module, static_keys: dict[str, tuple[str, ...]] | None = None) -> torch.fx.GraphModule:
    # Decided before tracing: while it traces, torch.fx answers parameter reads with proxies,
    # which a structural test of the module would not recognise. Mode-dependent modules stay
    # whole too, so train()/eval() switch them (a traced `if self.training:` would be fixed).
    whole = {id(m) for m in model.modules() if keeps_whole(m)}
    whole |= {id(model.get_submodule(path)) for path in mode_modules(model)}
    graph = _DMTTracer(whole, static_keys).trace(model)
    gm = torch.fx.GraphModule(model, graph, class_name=f"DMT{type(model).__name__}")
    _switch_modes(model, gm)
    if static_keys:
        placeholders = [str(n.target) for n in graph.nodes if n.op == "placeholder"]
        gm.register_forward_pre_hook(StaticKeys({placeholders.index(a): k for a, k in static_keys.items()}))
        gm.meta["dmt_static_keys"] = dict(static_keys)
    return gm


class StaticKeys:
    """A forward pre-hook: each KeyedJaggedTensor argument whose keys the graph fixed (step 4)
    must come with exactly those keys."""

    def __init__(self, keys: dict[int, tuple[str, ...]]) -> None:
        self.keys = keys  # argument position -> keys

    def __call__(self, module: nn.Module, args: tuple) -> None:
        for position, keys in self.keys.items():
            value = args[position] if position < len(args) else None
            if isinstance(value, KeyedJaggedTensor) and tuple(value.keys()) != keys:
                raise InputValidationError(
                    f"a KeyedJaggedTensor (argument {position}) with keys {list(value.keys())}",
                    f"keys {list(keys)}: forward() iterates over them, so the graph was traced with "
                    "the example batch's keys fixed",
                    ["build every batch with the example batch's keys, in its order",
                     "or transform again with an example batch of these keys"])


def _kjt_arguments(model: nn.Module, example_inputs: tuple | None) -> dict[str, tuple[str, ...]]:
    """forward()'s KeyedJaggedTensor arguments in the example batch: name -> keys."""
    if not example_inputs:
        return {}
    try:
        bound = inspect.signature(model.forward).bind(*example_inputs)
    except TypeError:
        return {}
    return {name: tuple(value.keys()) for name, value in bound.arguments.items()
            if isinstance(value, KeyedJaggedTensor)}


def _switch_modes(model: nn.Module, gm: torch.fx.GraphModule) -> None:
    """Dropout functions of mode-reading forwards follow train()/eval(); a batch norm function
    that cannot is refused (dmt_fx.compiler.modes)."""
    switch_dropout_calls(model, gm)
    refuse_fixed_modes(model, gm)
    gm.recompile()


def _dynamic_shapes(value: Any) -> Any:
    """Dim.AUTO for every dimension of every tensor, shaped as torch.export wants: like the
    inputs for built-in containers, as the flattened fields for a registered batch class."""
    if isinstance(value, torch.Tensor):
        return {i: Dim.AUTO for i in range(value.dim())}
    if isinstance(value, dict) and not is_user_node(value):
        return {k: _dynamic_shapes(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_dynamic_shapes(v) for v in value)
    if type(value) in pytree.SUPPORTED_NODES:
        return [_dynamic_shapes(v) for v in pytree.SUPPORTED_NODES[type(value)].flatten_fn(value)[0]]
    return None


def _by_signature(model: nn.Module, dynamic: tuple) -> tuple:
    """torch.export matches dynamic shapes to forward()'s parameters: a `*args` parameter
    takes one entry, the tuple of the shapes of the arguments it collects."""
    kinds = [p.kind for p in inspect.signature(model.forward).parameters.values()]
    if inspect.Parameter.VAR_POSITIONAL not in kinds:
        return dynamic
    fixed = kinds.index(inspect.Parameter.VAR_POSITIONAL)
    return (*dynamic[:fixed], tuple(dynamic[fixed:]))


def export_capture(model: nn.Module, example_inputs: tuple) -> torch.fx.GraphModule:
    register_batch_classes(example_inputs)  # dataclasses and dict-likes torch.export can flatten
    # Every tensor dimension AUTO: batch and bag sizes stay symbolic, while dimensions
    # the model fixes (feature counts, embedding dims) are specialised without error.
    dynamic = _by_signature(model, _dynamic_shapes(tuple(example_inputs)))
    program = torch.export.export(model, tuple(example_inputs), strict=False, dynamic_shapes=dynamic)
    gm = program.module()
    _share_parameters(model, gm)
    _restore_train_eval(gm)
    # export bakes each module's mode into its aten ops: its mode-dependent calls become
    # calls of the user's modules again (train()/eval() switch them as on the original)
    collapse_mode_regions(model, gm)
    _switch_modes(model, gm)
    gm.training = model.training
    return gm


def _restore_train_eval(gm: nn.Module) -> None:
    """Give the exported module back nn.Module's train()/eval() (export replaces them)."""
    for name in ("train", "eval"):
        gm.__dict__.pop(name, None)


def _share_parameters(model: nn.Module, gm: nn.Module) -> None:
    """Make the exported module use the model's own parameter tensors (no copies)."""
    originals = dict(model.named_parameters(remove_duplicate=False))
    for fqn, param in list(gm.named_parameters(remove_duplicate=False)):
        source = originals.get(fqn)
        if source is not None and source is not param:
            owner, _, leaf = fqn.rpartition(".")
            setattr(gm.get_submodule(owner), leaf, source)


def _user_frame(exc: BaseException) -> str:
    """The innermost traceback frame outside torch/torchrec/dmt_fx: the line to fix."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        path = frame.filename.replace("\\", "/")
        if not any(part in path for part in ("/torch/", "/torchrec/", "/dmt_fx/", "/site-packages/")):
            return f"{frame.filename}:{frame.lineno}: {frame.line}"
    return "<unknown location>"


def capture(model: nn.Module, example_inputs: tuple | None) -> tuple[torch.fx.GraphModule, str]:
    """Return (graph module, route) where route is "symbolic" or "export"."""
    _check_supported(model)
    gm, route = _capture(model, example_inputs)
    if root_reads_training(model) and not _same_in_other_mode(model, example_inputs, gm):
        gm.register_forward_pre_hook(ModeGuard(model.training, type(model).__name__))
        gm.meta["dmt_one_mode"] = model.training
    keep_state_dict_keys(model, gm)
    return gm, route


def _same_in_other_mode(model: nn.Module, example_inputs: tuple | None, gm: torch.fx.GraphModule) -> bool:
    """Whether a capture in the other mode gives the same graph (forward()'s own branches on
    self.training took the same way)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        for m, flag in flags:
            m.training = not flag
        other, _ = _capture(model, example_inputs)
    except DMTError:
        return False
    finally:
        for m, flag in flags:
            m.training = flag
    return other.code == gm.code


def keep_state_dict_keys(model: nn.Module, gm: nn.Module) -> None:
    """Constants are not state: every buffer of `gm` the model's state dict lacks becomes
    non-persistent (tracing turns non-persistent buffers and plain tensor attributes into
    persistent buffers, e.g. `_tensor_constant0`, which broke loading the model's checkpoints)."""
    keys = set(model.state_dict().keys())
    for fqn, buffer in list(gm.named_buffers(remove_duplicate=False)):
        if fqn not in keys:
            owner, _, leaf = fqn.rpartition(".")
            gm.get_submodule(owner).register_buffer(leaf, buffer, persistent=False)


def _check_supported(model: nn.Module) -> None:
    """check_supported, except that a model whose tables are parameters read by functional
    lookups (quotient-remainder bags hold no embedding module) goes on to the analysis,
    which finds its lookups in the graph or refuses the model."""
    try:
        check_supported(model)
    except NoEmbeddingError:
        if not _table_parameters(model):
            raise


def _table_parameters(model: nn.Module) -> list[str]:
    """2-D float parameters outside the dense layers: tables a functional lookup may read."""
    dense = (nn.Linear, nn.Bilinear, nn.MultiheadAttention, ConvNd)
    return [f"{fqn}.{name}" for fqn, m in model.named_modules() if not isinstance(m, dense)
            for name, p in m.named_parameters(recurse=False) if p.dim() == 2 and p.is_floating_point()]


def functional_lookups(gm: torch.fx.GraphModule) -> list[str]:
    """Names of the nodes calling an embedding function (not an embedding module)."""
    return [n.name for n in gm.graph.nodes if n.op == "call_function" and n.target in FUNCTIONAL_LOOKUPS]


def _with_static_keys(model: nn.Module, example_inputs: tuple | None) -> torch.fx.GraphModule | None:
    """Step 4: the symbolic capture with the example's KJT keys fixed, or None when it fails
    too (or there are no KJT arguments); the first failure is then the one reported."""
    static_keys = _kjt_arguments(model, example_inputs)
    if not static_keys:
        return None
    try:
        gm = symbolic_capture(model, static_keys)
    except ModeError:
        raise
    except Exception:  # noqa: BLE001 - the first failure names the user's line
        return None
    return None if functional_lookups(gm) else gm


def _capture(model: nn.Module, example_inputs: tuple | None) -> tuple[torch.fx.GraphModule, str]:
    try:
        gm = symbolic_capture(model)
    except ModeError:  # a mode the graph would fix: export would fix it too, the real reason
        raise
    except Exception as exc:  # tracing failures come as many exception types
        symbolic_error = exc
        gm = _with_static_keys(model, example_inputs)
        if gm is not None:
            return gm, "symbolic"
    else:
        calls = functional_lookups(gm)
        if not calls:
            return gm, "symbolic"
        symbolic_error = CaptureError(
            f"functional embedding lookups {calls} (e.g. F.embedding_bag on a parameter, as "
            "quotient-remainder bags do), which symbolic tracing does not tie to a table",
            "example_inputs, to capture them with torch.export (its aten ops name each table)",
            ["pass example_inputs=(...) (one batch, batch size > 1) to dmt_fx.transform"])
        if example_inputs is None:
            raise symbolic_error
    where = _user_frame(symbolic_error)
    if example_inputs is None:
        raise CaptureError(
            f"symbolic tracing failed at {where} ({type(symbolic_error).__name__}: {symbolic_error})",
            "a model torch.fx can trace, or example_inputs to capture it with torch.export",
            [
                "pass example_inputs=(...) (one batch, batch size > 1) to dmt_fx.transform",
                "the usual causes are a Python loop over a list of tensors, an int taken from a "
                "tensor shape, or a branch on tensor data",
            ],
        )
    if any(isinstance(m, (EmbeddingBagCollection, EmbeddingCollection)) for m in model.modules()):
        raise CaptureError(  # export would take a collection apart into its tables' aten ops
            f"symbolic tracing of a torchrec model failed at {where}: {symbolic_error}",
            "torchrec models that torch.fx can trace (EmbeddingBagCollection or EmbeddingCollection "
            "called on a KeyedJaggedTensor)",
            ["avoid Python-level iteration over KeyedJaggedTensor keys or values in forward()"],
        )
    try:
        return export_capture(model, example_inputs), "export"
    except DMTError:  # our own refusals (a mode the graph would fix, a batch class) name their reason
        raise
    except Exception as exc:
        raise CaptureError(
            f"symbolic tracing failed at {where}, and torch.export failed too: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}",
            "a model torch.fx or torch.export (non-strict) can capture",
            ["check that example_inputs is one valid batch with batch size > 1",
             "move data-dependent Python control flow out of forward()"],
        ) from exc

