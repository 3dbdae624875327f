"""The architecture rules that review would otherwise have to catch by eye.

- No module outside ``otlabel/kernels/`` compares backend names: it asks the
  backend object (:mod:`otlabel.kernels`).
- No module imports another module's private names (``from .x import _y``) or
  reaches into them (``x._y``); private *modules* (``_validation``, ``_arrays``,
  ``_system``, ``_fastmath``) are the package's internal tools and may be
  imported, as long as what is taken from them is public.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import otlabel
from otlabel.kernels import BACKENDS

PACKAGE = Path(otlabel.__file__).parent
MODULES = sorted(PACKAGE.rglob("*.py"))
SUBMODULES = {path.stem for path in MODULES} | {path.name for path in PACKAGE.iterdir()}


def _relative(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _identifiers(node: ast.AST) -> set[str]:
    names = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            names.add(child.id)
        elif isinstance(child, ast.Attribute):
            names.add(child.attr)
    return names


def _backend_comparisons(tree: ast.Module) -> list[int]:
    """Lines that compare something named like a backend with a backend's name."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        constants = {
            child.value
            for child in ast.walk(node)
            if isinstance(child, ast.Constant) and isinstance(child.value, str)
        }
        if constants & set(BACKENDS) and any("backend" in name for name in _identifiers(node)):
            found.append(node.lineno)
    return found


@pytest.mark.parametrize("path", MODULES, ids=_relative)
def test_no_backend_names_compared_outside_kernels(path):
    if path.parent.name == "kernels":
        return
    assert _backend_comparisons(_tree(path)) == [], f"{_relative(path)} compares backend names"


def test_the_backend_check_would_catch_a_comparison():
    tree = ast.parse('if options.backend == "numba":\n    pass\n')
    assert _backend_comparisons(tree) == [1]


def _imported_modules(tree: ast.Module) -> set[str]:
    """Local names bound to otlabel modules (``from . import x``, ``import otlabel.x as y``)."""
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and _is_ours(node):
            bound |= {alias.asname or alias.name for alias in node.names if _is_module(alias.name)}
        elif isinstance(node, ast.Import):
            bound |= {
                alias.asname or alias.name
                for alias in node.names
                if alias.name.startswith("otlabel")
            }
    return bound


def _is_ours(node: ast.ImportFrom) -> bool:
    return node.level > 0 or (node.module or "").startswith("otlabel")


def _is_module(name: str) -> bool:
    return name in SUBMODULES or f"{name}.py" in SUBMODULES


def _private_uses(tree: ast.Module) -> list[str]:
    problems = []
    modules = _imported_modules(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and _is_ours(node):
            for alias in node.names:
                dunder = alias.name.startswith("__")
                if alias.name.startswith("_") and not dunder and not _is_module(alias.name):
                    problems.append(f"line {node.lineno}: imports {alias.name}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            if private and node.value.id in modules:
                problems.append(f"line {node.lineno}: uses {node.value.id}.{node.attr}")
    return problems


@pytest.mark.parametrize("path", MODULES, ids=_relative)
def test_no_private_names_taken_from_other_modules(path):
    assert _private_uses(_tree(path)) == []


def test_the_private_name_check_would_catch_both_forms():
    tree = ast.parse("from .api import _options\nfrom . import solver\nsolver._sweep(1)\n")
    assert _private_uses(tree) == ["line 1: imports _options", "line 3: uses solver._sweep"]


# --------------------------------------------------------------------------
# the import graph has no cycle
# --------------------------------------------------------------------------


def _module_name(path: Path) -> str:
    """``otlabel.kernels.reference`` for ``otlabel/kernels/reference.py``."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> list[str]:
    """The otlabel modules that ``node`` (in ``module``, at ``path``) imports at run time."""
    if node.level == 0:
        base = node.module or ""
    else:
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = ".".join(part for part in (package, node.module or "") if part)
    if not base.startswith("otlabel"):
        return []
    # ``from .x import y``: the module x, and y itself where y is a module of x
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def _runtime_imports(tree: ast.Module) -> list[ast.AST]:
    """Import statements that run: at module level, in functions, not under
    ``if TYPE_CHECKING:`` (annotations only)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in _identifiers(node.test):
            skipped |= {id(child) for child in ast.walk(node)}
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skipped
    ]


def import_graph() -> dict[str, set[str]]:
    """Each otlabel module and the otlabel modules it imports when it runs."""
    modules = {_module_name(path): path for path in MODULES}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets: set[str] = set()
        for node in _runtime_imports(_tree(path)):
            if isinstance(node, ast.ImportFrom):
                targets |= {name for name in _resolve(module, path, node) if name in modules}
            else:
                targets |= {alias.name for alias in node.names if alias.name in modules}
        graph[module] = targets - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` (as a path that ends where it starts), or []."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_the_import_graph_has_no_cycle():
    """A package's own ``__init__`` re-exports its modules (an edge down, never up);
    every other import between two modules goes one way only."""
    graph = import_graph()
    for package in [module for module, path in _paths().items() if path.name == "__init__.py"]:
        for module in graph:  # a module importing its own package's __init__ is not a cycle
            if module.startswith(package + "."):
                graph[module].discard(package)
    assert find_cycle(graph) == []


def _paths() -> dict[str, Path]:
    return {_module_name(path): path for path in MODULES}


def test_the_cycle_check_would_catch_a_lazy_import():
    graph = {"otlabel.api": {"otlabel.result"}, "otlabel.result": {"otlabel.api"}}
    assert find_cycle(graph) == ["otlabel.api", "otlabel.result", "otlabel.api"]
    tree = ast.parse("def f():\n    from .api import predict\nif TYPE_CHECKING:\n    import x\n")
    assert len(_runtime_imports(tree)) == 1
