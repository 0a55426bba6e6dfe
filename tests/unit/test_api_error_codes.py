"""Every error code the API answers with is written down: each ``ApiError`` class (those beside
their routes too) is in ``api/errors.py``'s tree with its status and code, and each code is in
the errors paragraph of docs/api.md, so a client can find every answer it may get."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import api
from api.errors import ApiError

ROOT = Path(__file__).resolve().parents[2]
# codes the error mapping gives store and framework errors (api/errors.py, not ApiError classes)
MAPPED = ("not_found", "unknown_repository", "repository_exists", "run_finished", "job_finished",
          "method_not_allowed", "internal")


def _api_errors() -> list[type[ApiError]]:
    for module in pkgutil.walk_packages(api.__path__, "api."):
        if not module.name.endswith(".__main__"):  # the server's entry point runs on import
            importlib.import_module(module.name)
    found, todo = [], [ApiError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return [cls for cls in found if cls is not ApiError]


def _errors_paragraph() -> str:
    text = (ROOT / "docs" / "api.md").read_text()
    start = text.index("Errors are always JSON")
    return text[start:text.index("\n\n", start)]


def test_every_api_error_is_in_the_tree_with_its_status_and_code() -> None:
    """A line of the tree names the class, its HTTP status and (where it has its own) its code."""
    tree = importlib.import_module("api.errors").__doc__ or ""
    for cls in _api_errors():
        line = next((ln for ln in tree.splitlines() if re.search(rf"\b{cls.__name__}\b", ln)), None)
        assert line is not None, f"{cls.__module__}.{cls.__name__} is not in api/errors.py's tree"
        assert f" {cls.status_code} " in line, (cls.__name__, line)
        if "code" in vars(cls):
            assert f"``{cls.code}``" in line, (cls.__name__, line)


def test_every_code_is_in_the_errors_paragraph_of_the_api_docs() -> None:
    """Each class's code and each code the mapping gives is listed in docs/api.md's errors paragraph."""
    paragraph = _errors_paragraph()
    codes = {cls.code for cls in _api_errors()} | set(MAPPED)
    assert sorted(code for code in codes if f"`{code}`" not in paragraph) == []
