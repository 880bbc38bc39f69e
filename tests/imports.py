"""The project's import graph, read statically (ast) from the source: what the architecture and
dvc-deps tests check. Function-level imports count as edges too: they run when the function does."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO_ROOT

PACKAGES = ("mtbert", "flows")


@dataclass(frozen=True)
class Import:
    """One import statement: `target` is a project module or a top-level third-party package."""

    source: str
    target: str
    line: int
    in_function: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> dict[str, Path]:
    """Module name -> file, for every module of the project's packages."""
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO_ROOT / pkg).rglob("*.py"))}


def _targets(node: ast.Import | ast.ImportFrom, modules: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:  # `from a.b import c`: the submodule a.b.c if there is one, else a.b
        names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                 for a in node.names]
    return [n if n.split(".")[0] in PACKAGES else n.split(".")[0] for n in names]


def imports(files: dict[str, Path] | None = None) -> list[Import]:
    """Every import statement of the project, with where it stands."""
    files = files or project_files()
    found = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and getattr(node, "module", "") != "__future__":
                for target in _targets(node, set(files)):
                    found.append(Import(name, target, node.lineno, id(node) in in_function))
    return found


def parents(module: str) -> list[str]:
    """The packages Python imports before `module` (their __init__ runs first)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def closure(roots: list[str], edges: list[Import], module_level_only: set[str] = frozenset()) -> set[str]:
    """Project modules that importing `roots` (and running their functions) can execute.

    For modules in `module_level_only`, only their module-level imports are followed.
    """
    project = set(project_files())
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen or module not in project:
            continue
        seen.add(module)
        todo += parents(module)
        todo += [e.target for e in edges if e.source == module and e.target in project
                 and not (module in module_level_only and e.in_function)]
    return seen


def cycles(edges: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. import cycles."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if e.target.split(".")[0] in PACKAGES:
            graph.setdefault(e.source, set()).add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found
