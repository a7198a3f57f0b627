"""Private names of torch.fx. Each entry says why we need it; all were checked on torch 2.13.0.
tests/test_compat.py checks that each still exists with the shape we rely on.
"""

from __future__ import annotations

from typing import Any, Callable

import torch.fx as fx
from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo
from torch.fx.graph_module import _copy_attr
from torch.fx.node import _get_qualified_name

# A call target's importable name (torch.relu, not torch._VariableFunctionsClass.relu), as
# fx's own code printer names it (torch 2.13.0).
qualified_name = _get_qualified_name

# Copy one parameter or buffer, with the submodules on its path, into another GraphModule;
# GraphModule() copies only what forward reads (torch 2.13.0).
copy_attr = _copy_attr


def graph_root(graph: fx.Graph) -> fx.Node:
    """The graph's sentinel node: appending after it moves a node to the front (torch 2.13.0)."""
    return graph._root


def copy_codegen(source: fx.Graph, target: fx.Graph) -> None:
    """Give `target` the code generator of `source`: an exported graph's pytree inputs and
    outputs live there, not in the nodes (torch 2.13.0)."""
    target._codegen = source._codegen


def plain_tuple_output(source: fx.Graph, target: fx.Graph) -> None:
    """`target` takes `source`'s inputs (an exported graph's pytree) and returns a plain tuple
    (its own output node): the code generator keeps the inputs' spec, drops the output's."""
    codegen = source._codegen
    if isinstance(codegen, _PyTreeCodeGen):
        info = codegen.pytree_info
        target._codegen = _PyTreeCodeGen(_PyTreeInfo(info.orig_args, info.in_spec, None))


# A GraphModule's class (made for that one module) calls `_wrapped_call(self, *args)` from
# __call__: wrapping it catches a lookup's error around the whole call (torch 2.13.0).
def graph_module_call(cls: type) -> Callable[..., Any] | None:
    """The class's own `_wrapped_call`, None where the class has none."""
    return vars(cls).get("_wrapped_call")


def set_graph_module_call(cls: type, call: Callable[..., Any]) -> None:
    cls._wrapped_call = call  # type: ignore[attr-defined]
