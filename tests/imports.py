"""The project's own import graph, read from the source (ast): which pipeline modules a module imports."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def module_file(name: str) -> Path | None:
    """pipeline.lib.codec -> <repo>/pipeline/lib/codec.py (None for a package or a non-project module)."""
    path = REPO / Path(*name.split("."))
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imported(path: Path) -> set[str]:
    """Dotted names of the pipeline modules `path` imports anywhere (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("pipeline"):
            found |= {
                f"{node.module}.{alias.name}" for alias in node.names if module_file(f"{node.module}.{alias.name}")
            }
            if module_file(node.module):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("pipeline.")}
    return {name for name in found if module_file(name)}


def closure(module: str) -> set[str]:
    """`module` and every pipeline module it imports, directly or not."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += imported(module_file(name))
    return seen


def as_path(module: str) -> str:
    return module_file(module).relative_to(REPO).as_posix()
