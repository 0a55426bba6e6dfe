"""Shared helpers for the pipeline-language tests (pure: no services, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require_corpus

REPO_ROOT = Path(__file__).resolve().parents[3]
CORPUS = REPO_ROOT.parent / "shared" / "corpus" / "gitlab-ci"


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    return require_corpus(CORPUS)
