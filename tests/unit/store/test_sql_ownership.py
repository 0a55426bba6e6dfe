"""The store owns all SQL: no module outside pipelines/store builds a query.

Read from the source (ast), not by importing: a module that only builds a query when some
branch runs is caught all the same. Outside the store a module may name the types it is handed
(an ``Engine`` or a ``Session`` to pass to a store function) and catch SQLAlchemy's errors; it
may not import what builds SQL (``select``, ``insert``, ``update``, ``delete``, ``text``,
``col``, ``func``, ``sqlalchemy`` itself as a module) nor call a session's query methods.
Inside the store, every write is a prepared statement (pipelines/store/statements.py): no module
uses the ORM's unit of work (``session.add``, ``flush``, ``delete``, ``get``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
ROOMS = ("api", "worker", "pipelines")
# what a caller may take from SQLAlchemy / SQLModel: types to hand on, and errors to catch
ALLOWED_NAMES = {
    "sqlalchemy.engine": {"Engine", "Connection"},
    "sqlalchemy.orm": {"Session"},
    "sqlmodel": {"Session"},
    "sqlalchemy.exc": None,  # any error class
}
# a session's or connection's query methods: only the store calls them
QUERY_METHODS = {"exec", "execute", "exec_driver_sql", "scalars", "scalar", "query"}


def _outside_store() -> list[Path]:
    files = []
    for room in ROOMS:
        for path in sorted((REPO / room).rglob("*.py")):
            relative = path.relative_to(REPO)
            if relative.parts[:2] == ("pipelines", "store"):
                continue
            files.append(path)
    return files


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("sqlalchemy", "sqlmodel") and alias.name != "sqlalchemy.exc":
                    found.append(f"{shown}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] not in ("sqlalchemy", "sqlmodel"):
                continue
            allowed = ALLOWED_NAMES.get(node.module, set())
            for alias in node.names:
                if allowed is not None and alias.name not in allowed:
                    found.append(f"{shown}:{node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = node.func.value
            name = receiver.id if isinstance(receiver, ast.Name) else getattr(receiver, "attr", "")
            if node.func.attr in QUERY_METHODS and name in ("session", "s", "connection", "conn", "c"):
                found.append(f"{shown}:{node.lineno}: {name}.{node.func.attr}(...)")
    return found


def test_the_rule_sees_a_query_built_outside_the_store(tmp_path: Path) -> None:
    """The check itself: a module that imports select and calls session.exec is caught."""
    sample = tmp_path / "sample.py"
    sample.write_text("import sqlalchemy as sa\nfrom sqlmodel import Session, select\n\n"
                      "def read(session: Session) -> object:\n    return session.exec(select(sa.text('1')))\n")
    assert _problems(sample) == ["sample.py:1: import sqlalchemy", "sample.py:2: from sqlmodel import select",
                                 "sample.py:5: session.exec(...)"]


@pytest.mark.parametrize("path", _outside_store(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_outside_the_store_builds_sql(path: Path) -> None:
    """api/, worker/ and the rest of pipelines/ call named store functions; they never build a
    query or run one on a session."""
    assert _problems(path) == []


UNIT_OF_WORK = {"add", "add_all", "flush", "delete", "merge", "get", "refresh"}


def _unit_of_work_calls(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [f"{path.relative_to(REPO)}:{node.lineno}: session.{node.func.attr}(...)"
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in UNIT_OF_WORK and isinstance(node.func.value, ast.Name)
            and node.func.value.id in ("session", "s")]


@pytest.mark.parametrize("path", sorted((REPO / "pipelines" / "store").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_the_store_writes_through_statements_not_the_orm_unit_of_work(path: Path) -> None:
    """One write path: every change is a prepared statement run on the session's connection;
    nothing is added to, flushed from or looked up in a session's identity map."""
    assert _unit_of_work_calls(path) == []
