"""Shared test settings.

Tests that need root or a kernel feature skip with the reason printed, except when
``SANDPIT_REQUIRE_ALL=1`` (CI sets it): then a missing requirement fails the test instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"


def require(condition: bool, why: str) -> None:
    """Skip (or, in CI, fail) unless ``condition`` holds."""
    if condition:
        return
    if os.environ.get("SANDPIT_REQUIRE_ALL") == "1":
        pytest.fail(f"required in CI but missing: {why}")
    pytest.skip(why)


def require_corpus(path: Path) -> Path:
    """The shared corpus (real-world data beside the repository): CI (``.ci/run`` sets
    ``SANDPIT_REQUIRE_CORPUS=1``) fails without it; a clone without ``../shared`` skips its tests."""
    if path.is_dir():
        return path
    why = f"the shared corpus is not at {path} (../shared must sit beside the repository)"
    if os.environ.get("SANDPIT_REQUIRE_CORPUS") == "1":
        pytest.fail(f"required in CI but missing: {why}")
    pytest.skip(why)


def pytest_report_header(config: pytest.Config) -> str | None:
    if CORPUS.is_dir():
        return None
    return f"corpus tests skipped: no {CORPUS} (clone ../shared beside the repository to run them)"


def require_root() -> None:
    require(os.geteuid() == 0, "needs root (containers, mounts, cgroups)")


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    require(not missing, f"needs {', '.join(missing)} installed")
