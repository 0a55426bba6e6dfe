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


@pytest.mark.parametrize(("cache", "expected"), [
    (Cache(key="deps-v1"), "deps-v1"),
    (Cache(key="default"), "default"),
    (Cache(key="main-3.11"), "main-3.11"),
    (Cache(key="..."), "..."),  # only "." and ".." are refused, not every run of dots
    (Cache(key="."), None),  # outside the grammar: hashed, never stored as written
    (Cache(key="feature%2Fx"), None),
])
def test_a_plain_key_is_used_as_written_when_the_grammar_allows(cache: Cache, expected: str | None) -> None:
    """Keys the grammar allows are the key; others become ``~sha256-<hex>`` of themselves."""
    key = cache_key(cache, None)
    if expected is None:
        assert key.startswith("~sha256-") and len(key) == len("~sha256-") + 64
    else:
        assert key == expected


def test_a_files_key_follows_the_files_content_not_their_order(tmp_path: Path) -> None:
    """``key: files`` hashes the named files' bytes (in a fixed order) and keeps the prefix."""
    (tmp_path / "a.lock").write_text("a1")
    (tmp_path / "b.lock").write_text("b1")

    def key(*files: str, prefix: str | None = None) -> str:
        return cache_key(Cache(key="", key_files=files, key_prefix=prefix), tmp_path)

    first = key("a.lock", "b.lock")
    assert first == key("b.lock", "a.lock") and len(first) == 40
    assert key("a.lock", "b.lock", prefix="deps").startswith("deps-")
    (tmp_path / "b.lock").write_text("b2")
    assert key("a.lock", "b.lock") != first
    assert key("a.lock") != key("a.lock", "missing.lock")  # a file that is absent still counts
    assert cache_key(Cache(key="", key_files=("a.lock",)), None) != key("a.lock")  # no source: names only
