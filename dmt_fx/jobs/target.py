"""Model targets: `pkg.module:factory` or `path/to/file.py:factory`, loaded with clear errors.

Shared by the CLI and the torchrun worker (each rank builds the model from the same target).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import torch.nn as nn

from dmt_fx.ir.errors import DMTError
from dmt_fx.jobs.meta_build import skip_meta_init


class TargetError(DMTError):
    """The TARGET given to the CLI does not name a model factory that works."""


_TARGET_FORMS = "TARGET as pkg.module:factory or path/to/file.py:factory"


def load_target(spec: str) -> tuple[nn.Module, tuple | None]:
    """Import and call a model factory; return (model, example_inputs or None).

    `spec` is `pkg.module:factory` or `path/to/file.py:factory`; the factory takes no
    arguments and returns a module or `(module, example_inputs)`."""
    module, attr = target_module(spec)
    factory = _attribute(module, attr, spec)
    return _call_factory(factory, spec)


def target_module(spec: str) -> tuple[Any, str]:
    """The imported Python module of a TARGET and the factory's attribute name."""
    where, sep, attr = spec.rpartition(":")  # rpartition: a Windows drive has a ':' too
    if not sep or not where or not attr:
        raise TargetError(f"target {spec!r} without a ':factory' part", _TARGET_FORMS,
                          [f"name the factory, e.g. {spec or 'examples/torchrec_dlrm.py'}:build"])
    return (_import_file(where) if _is_path(where) else _import_name(where)), attr


def _is_path(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def _cwd_importable(*, first: bool) -> None:
    """Let the working directory's modules be imported: ahead of everything (`first`, as
    `python -m` does) or after it (installed packages win)."""
    if os.getcwd() in sys.path or "" in sys.path:
        return
    if first:
        sys.path.insert(0, os.getcwd())
    else:
        sys.path.append(os.getcwd())


def _import_name(name: str) -> Any:
    _cwd_importable(first=True)  # like `python -m`: modules under the working directory import
    return _guarded_import(lambda: importlib.import_module(name), name)


def _import_file(where: str) -> Any:
    path = Path(where).resolve()
    if not path.is_file():
        raise TargetError(f"no file {where!r}", f"{_TARGET_FORMS}, with an existing file",
                          ["check the path (relative paths start at the working directory)"])
    package = _package_name(path)
    if package is None:
        return _guarded_import(lambda: _load_standalone(path), where)
    # A file inside a package may use relative imports: import it by its dotted name.
    root = str(path.parents[package.count(".")])
    if root not in sys.path:
        sys.path.insert(0, root)
    module = _guarded_import(lambda: importlib.import_module(package), where)
    if Path(getattr(module, "__file__", "") or "").resolve() != path:
        raise TargetError(f"{package!r} imports {getattr(module, '__file__', None)!r}, not {str(path)!r}",
                          f"the module in {where}",
                          ["another installed package has the same name; rename yours or use pkg.module:factory"])
    return module


def _package_name(path: Path) -> str | None:
    """`examples.torchrec_dlrm` for a file in a package directory, else None."""
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts) if len(parts) > 1 else None


def _load_standalone(path: Path) -> Any:
    # Sibling modules of a loose script are importable, as when running the script. So are
    # the working directory's packages (a file under a project's folder that imports the
    # project by name, run from its root); appended, so an installed package still wins.
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    _cwd_importable(first=False)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, f"no loader for {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses and pickling look modules up here
    spec.loader.exec_module(module)
    return module


def _guarded_import(load, what: str) -> Any:
    try:
        return load()
    except Exception as exc:  # any import failure is a problem with the user's target
        raise TargetError(f"importing {what!r} fails: {_one_line(exc)}", "an importable module",
                          [f"run `python -c 'import ...'` on {what} to see the full error",
                           "run dmt-fx from the directory the module's imports expect"]) from None


def _attribute(module: Any, attr: str, spec: str) -> Any:
    value = module
    for part in attr.split("."):
        if not hasattr(value, part):
            public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                            and getattr(v, "__module__", None) == module.__name__)
            raise TargetError(f"{module.__name__} has no attribute {attr!r}",
                              "a factory function defined in the target module",
                              [f"use one of: {', '.join(public[:8]) or '(none)'}"])
        value = getattr(value, part)
    if not callable(value):
        raise TargetError(f"{spec} is a value of type {type(value).__name__}, not callable",
                          "a factory called with no arguments", ["point TARGET at a function or class"])
    return value


def _call_factory(factory: Any, spec: str) -> tuple[nn.Module, tuple | None]:
    try:
        with skip_meta_init():  # meta tensors have no values to initialise (meta_build.py)
            made = factory()
    except Exception as exc:
        raise TargetError(f"{spec}() raises {_one_line(exc)}", "a factory that runs with no arguments",
                          ["give every factory argument a default", "call the factory yourself to debug it"]) from None
    model, inputs = made if isinstance(made, tuple) and len(made) == 2 else (made, None)
    if not isinstance(model, nn.Module):
        raise TargetError(f"{spec}() returns a value of type {type(made).__name__}",
                          "an nn.Module or a tuple (nn.Module, example_inputs)",
                          ["return the model (and optionally one batch of inputs) from the factory"])
    if inputs is not None and not isinstance(inputs, tuple):
        inputs = tuple(inputs) if isinstance(inputs, list) else (inputs,)
    return model, inputs


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
