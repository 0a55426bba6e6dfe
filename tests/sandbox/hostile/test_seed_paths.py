"""A hostile source tree cannot make the host read or write outside it while a job's workspace is
seeded: the listing may name paths through a symlink, and the tree may hold links to host files."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import require_root
from worker.sandbox.seed import copy_source


def test_listing_through_a_symlinked_directory_is_not_followed(tmp_path: Path) -> None:
    """`a -> <outside>` with `a/secret` listed: the link is copied as a link, nothing is read through
    it, and nothing is written through the copied link."""
    require_root()
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "secret").write_text("host data")
    src, dest = tmp_path / "src", tmp_path / "ws"
    src.mkdir()
    dest.mkdir()
    os.symlink(outside, src / "a")
    (src / "ok.txt").write_text("fine")
    copy_source(src, dest, 4242, ["a", "a/secret", "ok.txt", "../host/secret", "/etc/passwd"])
    assert os.readlink(dest / "a") == str(outside)
    assert sorted(os.listdir(dest)) == ["a", "ok.txt"]
    assert (outside / "secret").read_text() == "host data" and sorted(os.listdir(outside)) == ["secret"]
    assert (dest / "ok.txt").read_text() == "fine" and os.stat(dest / "ok.txt").st_uid == 4242


def test_a_link_to_a_host_file_is_copied_as_a_link(tmp_path: Path) -> None:
    """`passwd -> /etc/passwd` stays a symlink (resolved inside the job, not on the host)."""
    require_root()
    src, dest = tmp_path / "src", tmp_path / "ws"
    src.mkdir()
    dest.mkdir()
    os.symlink("/etc/passwd", src / "passwd")
    (src / "d").mkdir()
    os.symlink("/etc", src / "d" / "etc")
    copy_source(src, dest, 4242, None)
    assert os.readlink(dest / "passwd") == "/etc/passwd"
    assert os.readlink(dest / "d" / "etc") == "/etc"
    assert os.lstat(dest / "passwd").st_uid == 4242
