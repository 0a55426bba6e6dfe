"""Every example in a docstring holds: each module of pipelines/, worker/ and api/ whose source has a
``>>>`` runs its doctests here (found by reading the files, so a new module with examples is
picked up without being listed).

Importing a module must not have side effects that matter (the style's rule: nothing connects or
reads the environment at import time), so importing each one here is safe; a module whose
examples cannot be imported that way would fail here, loudly, rather than be skipped.
"""

from __future__ import annotations

import doctest
import importlib
import io
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "worker", "api")
#: packages whose examples are not run here (none; a package listed here would be named with why)
NOT_HERE: tuple[str, ...] = ()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_with_examples() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = _module_name(path)
            left_out = any(name == p or name.startswith(p + ".") for p in NOT_HERE)
            if not left_out and ">>>" in path.read_text(encoding="utf-8"):
                found.append(name)
    return found


MODULES = modules_with_examples()


def test_the_scan_finds_the_examples() -> None:
    """The scan sees the modules that carry examples (a broken scan must not pass as "all good")."""
    assert len(MODULES) >= 60
    assert {"pipelines.names", "pipelines.record", "pipelines.job_record", "pipelines.files.locks",
            "worker.sandbox.network.addresses"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_examples_hold(name: str) -> None:
    """Every ``>>>`` example of the module gives the output its docstring shows."""
    module = importlib.import_module(name)
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = doctest.DocTestFinder().find(module, name)
    for test in tests:
        runner.run(test, out=report.write)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0, f"{name} has '>>>' but no example doctest can run"
    assert results.failed == 0, report.getvalue()
