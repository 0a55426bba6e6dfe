"""The pipeline language is pure: no I/O library, no api/worker import, anywhere in the package."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path

import pytest

import pipelines.language

FORBIDDEN = {
    "celery",
    "redis",
    "sqlmodel",
    "sqlalchemy",
    "pyroute2",
    "subprocess",
    "socket",
    "httpx",
    "requests",
    "urllib",
    "http",
    "api",
    "worker",
    "asyncio",
}
PACKAGE_DIR = Path(pipelines.language.__file__).parent
MODULES = sorted(PACKAGE_DIR.glob("*.py"))


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            roots.add("<dynamic import>")
    return roots


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_imports_no_io_library(path: Path) -> None:
    """No module of pipelines/language imports an I/O library or api/worker (checked on the AST)."""
    assert not _imported_roots(path) & (FORBIDDEN | {"<dynamic import>"})


def test_importing_the_package_loads_no_io_library() -> None:
    """Importing every module leaves sys.modules free of I/O libraries brought in by this package."""
    before = set(sys.modules)
    for info in pkgutil.iter_modules([str(PACKAGE_DIR)]):
        importlib.import_module(f"pipelines.language.{info.name}")
    new_roots = {name.split(".")[0] for name in set(sys.modules) - before}
    assert not new_roots & FORBIDDEN, new_roots & FORBIDDEN
    # Also when something else imported them earlier: none of our modules refers to them.
    for info in pkgutil.iter_modules([str(PACKAGE_DIR)]):
        module = sys.modules[f"pipelines.language.{info.name}"]
        for value in vars(module).values():
            root = getattr(value, "__module__", None) or getattr(value, "__name__", "")
            assert str(root).split(".")[0] not in FORBIDDEN, (info.name, root)
