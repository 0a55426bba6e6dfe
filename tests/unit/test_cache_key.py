"""Cache keys (worker/cache.py): never a host path, and ``key: files:`` never reads outside the source."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.identifiers import cache_key_problem
from pipelines.language.model import Cache
from worker.cache import cache_key


def test_key_files_never_read_outside_the_source(tmp_path: Path) -> None:
    """``key: files:`` is read beneath the source root without following symlinks: '..', an
    absolute name, a symlink to a host file or through a linked directory give a marker, not the
    host's bytes, and a FIFO never hangs the worker."""
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "secret").write_text("host secret")
    (src / "lock").write_text("v1")
    os.symlink(tmp_path / "secret", src / "to-secret")
    os.mkfifo(src / "fifo")  # reading it would block forever
    (src / "sub").symlink_to(tmp_path)

    def key(*files: str) -> str:
        return cache_key(Cache(key="", key_files=files), src)

    assert key("lock") != key("to-secret")
    before = key("../secret", "/etc/hostname", "to-secret", "fifo", "sub/secret")
    (tmp_path / "secret").write_text("changed host secret")
    assert key("../secret", "/etc/hostname", "to-secret", "fifo", "sub/secret") == before
    assert cache_key_problem(key("lock")) is None


@pytest.mark.parametrize("raw", ["a/b", "..", "%2e%2E", "x\x00y", "k" * 300, "back\\slash", "line\nbreak"])
def test_keys_outside_the_grammar_are_hashed(raw: str) -> None:
    """A key the grammar refuses (the language refuses it up front) is stored under a hash of
    itself, so no such text reaches the database or a path; distinct keys stay distinct."""
    key = cache_key(Cache(key=raw), None)
    assert cache_key_problem(key) is None and raw not in key
    assert key != cache_key(Cache(key=raw + "!"), None)
