"""``pipelines.files.digests``: a stored file is checked against its sha256 once per file version."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pipelines.files import digests
from pipelines.files.digests import fd_intact, remember_intact


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    path = tmp_path / "blob"
    path.write_bytes(b"hello")
    return path


def test_matching_bytes_are_intact_and_others_not(stored: Path) -> None:
    """The right hash is intact, any other is not; the fd's offset is left alone."""
    fd = os.open(stored, os.O_RDONLY)
    try:
        assert fd_intact(fd, _sha(b"hello"))
        assert not fd_intact(fd, _sha(b"hellO"))
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
    finally:
        os.close(fd)


def test_a_rewrite_after_a_check_is_seen(stored: Path) -> None:
    """Same size, other bytes, written after a successful check: the new version is hashed again."""
    sha = _sha(b"hello")
    fd = os.open(stored, os.O_RDWR)
    try:
        assert fd_intact(fd, sha)
        os.pwrite(fd, b"jello", 0)  # moves the ctime: a new file version, a new key
        assert not fd_intact(fd, sha)
    finally:
        os.close(fd)


def test_a_remembered_version_is_not_read_again(stored: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A version noted by its writer (or checked once) is answered from memory, without a read."""
    fd = os.open(stored, os.O_RDONLY)
    try:
        remember_intact(_sha(b"hello"), os.fstat(fd))
        monkeypatch.setattr(digests.os, "pread", lambda *_a: pytest.fail("read again"))
        assert fd_intact(fd, _sha(b"hello"))
    finally:
        os.close(fd)


def test_a_directory_is_never_intact(tmp_path: Path) -> None:
    """Only a regular file can hold an artifact's bytes."""
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert not fd_intact(fd, _sha(b""))
    finally:
        os.close(fd)


def test_memory_is_bounded(stored: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At most ``_REMEMBERED_MAX`` versions are kept, the least recently used dropped first."""
    monkeypatch.setattr(digests, "_REMEMBERED_MAX", 2)
    monkeypatch.setattr(digests, "_remembered", type(digests._remembered)())
    st = os.stat(stored)
    for name in ("a", "b", "c"):
        remember_intact(name * 64, st)
    assert [key[0][0] for key in digests._remembered] == ["b", "c"]
