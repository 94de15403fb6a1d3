"""The house rules, checked on the source: rooms by role with one-way arrows, no import cycles, no
hidden dependencies inside functions (tests/test_private_api.py fences the private torch APIs)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Where each installed package lives in the checkout (pyproject's package-dir mapping).
ROOTS = {"fedbench": REPO / "fedbench", "fedbench.methods": REPO / "methods",
         "fedbench.datasets": REPO / "datasets", "fedbench.reports": REPO / "reports"}

# The rooms from the top floor down: a module may import its own room and the rooms below it,
# never one above. (docs/architecture.md draws the same picture.)
LAYERS = [
    ["fedbench.cli"],
    ["fedbench.testing", "fedbench.sweep"],
    ["fedbench.methods", "fedbench.reports"],
    ["fedbench.api"],
    ["fedbench.engine"],
    ["fedbench.execution", "fedbench.tracking"],
    ["fedbench.core"],
    ["fedbench.kits", "fedbench.simulation"],
    ["fedbench.memory"],
    ["fedbench.training"],
    ["fedbench.models", "fedbench.datasets"],
    ["fedbench.tracing"],
    ["fedbench.config", "fedbench.data", "fedbench.registry", "fedbench.seeding", "fedbench.errors"],
]
# A lazy import (inside a function) must say why on its line or the line above.
LAZY_REASON = re.compile(r"#\s*lazy\b", re.IGNORECASE)


def _modules() -> dict[str, Path]:
    found = {}
    for package, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _targets(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """The fedbench modules an import statement loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.rsplit(".", node.level)[0] if MODULES[module].name != "__init__.py" else module
            if node.level > 1 and MODULES[module].name == "__init__.py":
                package = module.rsplit(".", node.level - 1)[0]
            base = f"{package}.{base}" if base else package
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    return [name for name in names if name.startswith("fedbench")]


def _imports(module: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(modules imported at module level, [(line, target)] of imports inside functions without a reason)."""
    path = MODULES[module]
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    top: set[str] = set()
    hidden: list[tuple[int, str]] = []
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inside = {id(sub) for f in functions for sub in ast.walk(f)}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        targets = [t for t in _targets(node, module) if _owner(t) is not None]
        if id(node) in inside:
            first = node.lineno - 1
            while first > 0 and lines[first - 1].strip().startswith(("from ", "import ", "#")):
                first -= 1  # one reason covers a block of imports
            context = " ".join(lines[first: node.end_lineno])
            if targets and not LAZY_REASON.search(context):
                hidden += [(node.lineno, t) for t in targets]
        elif not _under_type_checking(tree, node):
            top.update(targets)
    return top, hidden


def _under_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    for block in ast.walk(tree):
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test):
            if any(sub is node for sub in ast.walk(block)):
                return True
    return False


def _owner(target: str) -> str | None:
    """The known module a dotted import target is (the longest prefix that is a module)."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in MODULES:
            return ".".join(parts[:end])
    return None


def _layer(module: str) -> int:
    for index, rooms in enumerate(LAYERS):
        if any(module == room or module.startswith(room + ".") for room in rooms):
            return index
    raise AssertionError(f"{module} belongs to no room of LAYERS; add it there and to docs/architecture.md")


GRAPH = {m: {o for t in _imports(m)[0] if (o := _owner(t)) and o != m} for m in MODULES}


def test_every_module_belongs_to_a_room():
    for module in MODULES:
        if module != "fedbench":
            _layer(module)


def test_arrows_point_down_never_up():
    upward = sorted(f"{m} -> {o}" for m, targets in GRAPH.items() for o in targets
                    if m != "fedbench" and o != "fedbench" and _layer(o) < _layer(m))
    assert not upward, "imports that run up a floor:\n" + "\n".join(upward)


def test_the_package_has_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_no_fedbench_import_hides_inside_a_function_without_a_reason():
    hidden = [f"{MODULES[m].relative_to(REPO)}:{line} imports {t}" for m in MODULES for line, t in _imports(m)[1]]
    assert not hidden, ("imports inside functions hide the dependency graph; move them to the top, or say why "
                        "with a '# lazy: ...' comment:\n" + "\n".join(hidden))


def test_builtin_methods_use_only_the_stable_api():
    """The built-ins are the proof that ``fedbench.api`` suffices for a method (a method may build
    on another method: FedRolex is HeteroFL with a rolling window)."""
    internal = sorted(
        f"{MODULES[m].relative_to(REPO)} imports {t}"
        for m in MODULES if m.startswith("fedbench.methods.")
        for t in _imports(m)[0]
        if not (t == "fedbench.api" or t.startswith("fedbench.api.") or t.startswith("fedbench.methods."))
    )
    assert not internal, "methods must import fedbench.api only:\n" + "\n".join(internal)

