"""``pipelines.files.removal``: one checked name at a time, under a directory fd, never through a link."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from pipelines.files.removal import checked_name, entries, remove_blob_if_unused, remove_entry

SHA = "ab" * 32


@pytest.mark.parametrize(("name", "ok"), [
    ("run-1.git", True), (".gc-1", True), ("", False), (".", False), ("..", False), ("a/b", False), ("a\0b", False),
])
def test_checked_names(name: str, ok: bool) -> None:
    """Only one path component can be removed."""
    assert checked_name(name) is ok


def _outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    return outside


def test_a_tree_goes_with_its_links_and_their_targets_stay(tmp_path: Path) -> None:
    """A directory is removed whole; a link inside it is removed, never followed."""
    outside = _outside(tmp_path)
    tree = tmp_path / "d" / "tree" / "deep"
    tree.mkdir(parents=True)
    os.symlink(outside, tree / "up")
    os.symlink(outside / "precious", tree / "file-link")
    assert remove_entry(tmp_path / "d", "tree") is True
    assert os.listdir(tmp_path / "d") == [] and (outside / "precious").read_text() == "keep"


def test_a_link_in_the_parent_is_removed_itself(tmp_path: Path) -> None:
    """A symlink at the name (to a directory outside) is unlinked; the directory it names stays whole."""
    outside = _outside(tmp_path)
    (tmp_path / "d").mkdir()
    os.symlink(outside, tmp_path / "d" / "tree")
    assert remove_entry(tmp_path / "d", "tree") is True
    assert (outside / "precious").read_text() == "keep" and os.listdir(tmp_path / "d") == []


def test_a_parent_that_is_a_link_is_refused(tmp_path: Path) -> None:
    """The directory itself must not be a symlink (a planted `sources -> /`): nothing is removed."""
    outside = _outside(tmp_path)
    os.symlink(outside, tmp_path / "planted")
    assert remove_entry(tmp_path / "planted", "precious") is False
    assert entries(tmp_path / "planted") == []
    assert (outside / "precious").read_text() == "keep"


def test_missing_things_are_nothing_to_do(tmp_path: Path) -> None:
    """A missing parent or name is False, never an error."""
    assert remove_entry(tmp_path / "none", "x") is False
    assert remove_entry(tmp_path, "x") is False
    assert remove_blob_if_unused(tmp_path, SHA, lambda: False) is False


def test_entries_looks_only_at_the_names_it_is_asked_for(tmp_path: Path) -> None:
    """A filtered listing holds only the names its filter accepts, a link described as a link."""
    (tmp_path / "a.svc0.jsonl").write_text("x")
    (tmp_path / "job.jsonl").write_text("x")
    (tmp_path / "b.svc1.jsonl").symlink_to("/etc/passwd")
    found = dict(entries(tmp_path, lambda name: ".svc" in name))
    assert sorted(found) == ["a.svc0.jsonl", "b.svc1.jsonl"]
    assert stat.S_ISREG(found["a.svc0.jsonl"].st_mode) and stat.S_ISLNK(found["b.svc1.jsonl"].st_mode)
    assert sorted(name for name, _st in entries(tmp_path)) == ["a.svc0.jsonl", "b.svc1.jsonl", "job.jsonl"]


def _blob(store: Path, age_s: float) -> Path:
    path = store / SHA[:2] / SHA
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


@pytest.mark.parametrize(("age_s", "named", "removed"), [
    (7200, False, True), (7200, True, False), (60, False, False),
])
def test_a_stored_file_goes_only_when_old_and_unnamed(tmp_path: Path, age_s: float, named: bool, removed: bool
                                                      ) -> None:
    """Past the hour's grace and named by nothing: removed; else put back under its name."""
    path = _blob(tmp_path, age_s)
    assert remove_blob_if_unused(tmp_path, SHA, lambda: named) is removed
    assert path.exists() is not removed
    assert [n for n in os.listdir(path.parent) if n.startswith(".gc-")] == []
