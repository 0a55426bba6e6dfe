"""Retention never removes a stored file that a writer is storing or keeping at the same moment."""

from __future__ import annotations

import os
import time
from pathlib import Path

from worker.sandbox.blobs import blob_path, intact, remove_if_unused, store_bytes

DATA = b"artifact bytes\n"


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_old_unreferenced_file_is_removed(tmp_path: Path) -> None:
    sha = store_bytes(tmp_path, DATA)
    _age(blob_path(tmp_path, sha), 7200)
    assert remove_if_unused(tmp_path, sha, lambda: False) is True
    assert not blob_path(tmp_path, sha).exists()
    assert os.listdir(blob_path(tmp_path, sha).parent) == []  # no side file left


def test_referenced_or_recent_file_is_kept(tmp_path: Path) -> None:
    sha = store_bytes(tmp_path, DATA)
    assert remove_if_unused(tmp_path, sha, lambda: False) is False  # written just now: in its grace
    _age(blob_path(tmp_path, sha), 7200)
    assert remove_if_unused(tmp_path, sha, lambda: True) is False  # a row still names it
    assert intact(blob_path(tmp_path, sha), sha)


def test_keeping_existing_content_renews_its_grace(tmp_path: Path) -> None:
    """A job storing bytes that are stored already touches the file: the sweep then keeps it."""
    sha = store_bytes(tmp_path, DATA)
    _age(blob_path(tmp_path, sha), 7200)
    assert store_bytes(tmp_path, DATA) == sha
    assert remove_if_unused(tmp_path, sha, lambda: False) is False
    assert intact(blob_path(tmp_path, sha), sha)


def test_a_writer_storing_during_the_sweep_keeps_its_file(tmp_path: Path) -> None:
    """The same bytes stored while the sweep decides (after it moved the old file aside) stay."""
    sha = store_bytes(tmp_path, DATA)
    _age(blob_path(tmp_path, sha), 7200)

    def referenced() -> bool:
        assert store_bytes(tmp_path, DATA) == sha  # a job keeps the same content right now
        return False

    remove_if_unused(tmp_path, sha, referenced)
    assert intact(blob_path(tmp_path, sha), sha)


def test_names_outside_the_grammar_are_refused(tmp_path: Path) -> None:
    assert remove_if_unused(tmp_path, "../../etc/passwd", lambda: False) is False
