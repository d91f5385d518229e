"""The package's structure: imports point one way, as each package's ``__init__`` says.

The graph is read from the source (every import, including those inside functions and under
``TYPE_CHECKING``), so a cycle or a dependency against the layering fails here, not in a
reviewer's head.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "qemu_depriv"

#: What each room may import (besides itself), lowest first; the top-level modules too.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "host": {"errors"},
    "accounts": {"errors", "host"},
    "settings": {"errors", "accounts"},
    "xl": {"errors", "accounts"},
    "qemu": {"errors", "host", "accounts", "xl"},
    "isolation": {"errors", "settings", "host", "accounts", "xl"},
    "vms": {"errors", "settings", "host", "accounts", "xl", "qemu", "isolation"},
    "checks": {"errors", "settings", "host", "accounts", "xl", "qemu", "isolation", "vms"},
    "demo": {"errors", "settings", "host", "accounts", "xl", "qemu", "isolation", "vms"},
    "cli": {
        "errors", "settings", "host", "accounts", "xl", "qemu", "isolation", "vms", "checks",
        "demo", "__init__",
    },
    "__main__": {"cli"},
    "__init__": set(),
}  # fmt: skip


def module_of(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports() -> dict[str, set[str]]:
    """Every module of the package, and the package modules it imports."""
    modules = {module_of(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:
                    base = ".".join([*name.split(".")[: -node.level], node.module])
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    found.add(candidate if candidate in modules else base)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_module_imports_itself_back_through_others() -> None:
    graph = imports()
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done:
            return
        if node in visiting:
            cycle = [*visiting[visiting.index(node) :], node]
            pytest.fail(f"import cycle: {' -> '.join(cycle)}")
        visiting.append(node)
        for child in sorted(graph[node]):
            visit(child)
        visiting.pop()
        done.add(node)

    for module in sorted(graph):
        visit(module)


def test_every_import_points_down_the_layering() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in sorted(imports().items())
        for target in sorted(targets)
        if room(target) != room(module) and room(target) not in ALLOWED[room(module)]
    ]
    assert wrong == []


def test_every_room_says_what_it_holds_and_may_import() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc, init


def test_a_launch_reaches_the_proc_verification_through_few_modules() -> None:
    """From the ``launch`` command to the /proc reads it verifies with: at most 7 modules."""
    graph = imports()
    start, goal = "qemu_depriv.cli.launch", "qemu_depriv.host.procfs"
    paths = {start: [start]}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node]):
            if child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    assert goal in paths
    assert len(paths[goal]) <= 7, paths[goal]
