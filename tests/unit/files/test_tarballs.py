"""Uploaded trees: what a tar may hold, what is refused by name, and an unpack that never writes
outside its directory."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from pipelines.files.tarballs import TarballRefused, check_tarball, unpack_tarball


def _tar(*entries: tuple[str, str, str | bytes], gz: bool = False) -> bytes:
    """Entries (name, kind, content-or-target): kind file, exec, dir, sym, hard, fifo."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        for name, kind, content in entries:
            info = tarfile.TarInfo(name)
            data = content.encode() if isinstance(content, str) else content
            if kind in ("file", "exec"):
                info.size, info.mode = len(data), 0o755 if kind == "exec" else 0o600
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                         "fifo": tarfile.FIFOTYPE, "dev": tarfile.CHRTYPE}[kind]
            info.linkname = str(content)
            tar.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize(("entries", "why"), [
    ([("/etc/cron.d/x", "file", "")], "leaves the tree"),
    ([("a/../../x", "file", "")], "leaves the tree"),
    ([("ok\nname", "file", "")], "control character"),
    ([("a", "file", ""), ("b", "hard", "a")], "hard link"),
    ([("p", "fifo", "")], "special file"),
    ([("d", "dev", "")], "special file"),
    ([("l", "sym", "/etc/passwd")], "points out of the tree"),
    ([("d/l", "sym", "../../etc")], "points out of the tree"),
    ([("l", "sym", "real"), ("l/evil", "file", "x")], "below one of its own symlinks"),
    ([("a", "file", "1"), ("./a", "file", "2")], "twice"),
])
def test_refused_entries(entries: list[tuple[str, str, str]], why: str) -> None:
    """Each kind of hostile entry is refused with a sentence naming it."""
    with pytest.raises(TarballRefused, match=why):
        check_tarball(_tar(*entries))


def test_caps_and_garbage() -> None:
    """Over the entry or byte cap, or not a tar at all: refused."""
    many = _tar(*((f"f{i}", "file", "x") for i in range(5)))
    with pytest.raises(TarballRefused, match="caps"):
        check_tarball(many, max_entries=4)
    with pytest.raises(TarballRefused, match="caps"):
        check_tarball(_tar(("big", "file", "x" * 100)), max_bytes=99)
    with pytest.raises(TarballRefused, match="cannot be read"):
        check_tarball(b"not a tar archive at all" * 40)


def test_unpack_keeps_links_as_links_and_only_exec_bits(tmp_path: Path) -> None:
    """A gzipped tree unpacks with its directories, files (0644 / 0755 whatever the archive
    says), and in-tree symlinks as links; a link already at a name is never written through."""
    data = _tar(("src", "dir", ""), ("src/main.c", "file", "int main;"), ("run.sh", "exec", "#!/bin/sh"),
                ("docs/link", "sym", "../src/main.c"), gz=True)
    assert check_tarball(data).entries == 4
    dest = tmp_path / "tree"
    dest.mkdir()
    assert unpack_tarball(data, dest) == ["src", "src/main.c", "run.sh", "docs/link"]
    assert (dest / "src/main.c").read_text() == "int main;"
    assert oct(os.stat(dest / "src/main.c").st_mode & 0o777) == "0o644"
    assert oct(os.stat(dest / "run.sh").st_mode & 0o777) == "0o755"
    assert os.readlink(dest / "docs/link") == "../src/main.c"
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "src").symlink_to(tmp_path / "victim")
    with pytest.raises(TarballRefused, match="cannot be unpacked"):
        unpack_tarball(_tar(("src/x", "file", "x")), planted)
    assert not (tmp_path / "victim").exists()
