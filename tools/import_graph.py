"""Architecture check: the package's import rules, read from the source (nothing is imported).

    python tools/import_graph.py [REPO]        (REPO defaults to the current folder)

The package is dmt_fx/ plus passes/, which installs as dmt_fx.passes. The rules:
  1. no import cycle between its modules (imports inside functions count as well);
  2. the runtime (the module defining `distribute`) never reaches the compiler (the module
     defining `transform`) or a graph pass (dmt_fx.passes.*), through any chain of imports;
  3. no file of dmt_fx/ or passes/ is longer than MAX_LINES lines.
The package's top-level __init__ re-exports everything, so edges into it are not followed:
what matters is what the runtime's own code depends on. Prints one line per violation and a
summary; exit status 1 when there is any violation.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_LINES = 400
ROOTS = (("dmt_fx", "dmt_fx"), ("passes", "dmt_fx.passes"))  # folder -> dotted package name
TOP_PACKAGE = "dmt_fx"


def find_modules(repo: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package."""
    modules = {}
    for folder, package in ROOTS:
        for path in sorted((repo / folder).rglob("*.py")):
            parts = list(path.relative_to(repo / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _owning_module(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that `name` (a module or a name inside one) belongs to."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that module `name` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:  # relative: climb level - 1 packages up from this one
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([source] if source else []))
            # `from pkg import sub` names a module when sub is one, else a name inside pkg
            targets += [f"{source}.{alias.name}" for alias in node.names]
    found = {_owning_module(target, modules) for target in targets}
    return {module for module in found if module and module != name}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def defining(modules: dict[str, Path], name: str) -> list[str]:
    """Modules whose top level defines a function or class called `name`."""
    def defines(path: Path) -> bool:
        body = ast.parse(path.read_text(encoding="utf-8"), str(path)).body
        return any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name for n in body)
    return [module for module, path in modules.items() if defines(path)]


def violations(repo: Path) -> tuple[list[str], int, int]:
    modules = find_modules(repo)
    graph = {m: imported_modules(m, p, modules) - {TOP_PACKAGE} for m, p in modules.items()}
    found = ["import cycle: " + " -> ".join(cycle) for cycle in find_cycles(graph)]
    runtime, compiler = defining(modules, "distribute"), defining(modules, "transform")
    if not runtime or not compiler:
        found.append(f"cannot find the modules defining distribute ({runtime}) and transform ({compiler})")
    for module in runtime:
        for reached in sorted(reachable(graph, module)):
            if reached.startswith("dmt_fx.passes") or reached in compiler:
                found.append(f"runtime {module} reaches compiler module {reached}")
    for path in sorted(modules.values()):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            found.append(f"{path.relative_to(repo)}: {lines} lines (> {MAX_LINES})")
    return found, len(modules), sum(len(targets) for targets in graph.values())


def main(argv: list[str]) -> int:
    found, n_modules, n_imports = violations(Path(argv[1] if len(argv) > 1 else ".").resolve())
    for line in found:
        print(line)
    print(f"{n_modules} modules, {n_imports} imports: {len(found)} architecture violation(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
