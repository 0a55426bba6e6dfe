"""Uploaded trees as tar archives: checked, then unpacked without trusting a byte of them (adapter).

``sandpit submit`` sends a work tree as a (gzipped) tar; the API checks it before storing it
(:func:`check_tarball`) and the worker unpacks it into a new directory (:func:`unpack_tarball`).
Python's :mod:`tarfile` reads the format (ustar, GNU and pax headers, gzip/bzip2/xz); its
``extract`` is not used: every entry is judged and written here.

Refused, each with the entry's name: an absolute name or one with ``..`` (or a control
character, or a component over 255 bytes); a hard link, a device, a FIFO; a symlink whose target
is absolute or leaves the tree ("no links out"); an entry below a symlink of the archive (it
would be written through the link); the same name twice; more than ``max_entries`` entries or
``max_bytes`` bytes of files. Writing is relative to directory fds opened ``O_NOFOLLOW``, files
are created ``O_EXCL | O_NOFOLLOW``, so nothing in the archive (or already in the directory)
can redirect a write onto the host; modes keep only the executable bits (0644 / 0755).

>>> import io, tarfile
>>> buf = io.BytesIO()
>>> with tarfile.open(fileobj=buf, mode="w") as tar:
...     info = tarfile.TarInfo("../escape"); tar.addfile(info, io.BytesIO(b""))
>>> try:
...     check_tarball(buf.getvalue())
... except TarballRefused as exc:
...     print(exc)
the archive's entry '../escape' leaves the tree (absolute, or with ..)
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_ENTRIES = 100_000
MAX_BYTES = 2 * 1024**3
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20


class TarballRefused(ValueError):
    """The archive is not a tree sandpit unpacks (the message names the entry and why)."""


@dataclass(frozen=True, slots=True)
class TreeListing:
    entries: int
    size: int
    files: frozenset[str] = frozenset()  # the regular files' names


def _members(data: bytes) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
            for member in tar:
                yield tar, member
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise TarballRefused(f"the archive cannot be read as tar: {exc}") from None


def _name(member: tarfile.TarInfo) -> str:
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/") if member.isdir() else name
    parts = name.split("/")
    if not name or name.startswith("/") or ".." in parts or any(p in ("", ".") for p in parts):
        raise TarballRefused(f"the archive's entry {member.name[:200]!r} leaves the tree (absolute, or with ..)")
    if any(ord(c) < 32 or c == "\x7f" for c in name) or any(len(p.encode()) > 255 for p in parts) or len(name) > 4096:
        raise TarballRefused(f"the archive's entry {member.name[:200]!r} has a control character or is too long")
    return name


def _judge(member: tarfile.TarInfo, name: str, links: set[str]) -> None:
    if member.islnk():
        raise TarballRefused(f"the archive's entry {name!r} is a hard link (not accepted; send the file)")
    if not (member.isfile() or member.isdir() or member.issym()):
        raise TarballRefused(f"the archive's entry {name!r} is a device, FIFO or other special file")
    parts = name.split("/")
    if any("/".join(parts[:i]) in links for i in range(1, len(parts))):
        raise TarballRefused(f"the archive's entry {name!r} lies below one of its own symlinks")
    if member.issym():
        target = member.linkname
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if not target or target.startswith("/") or joined == ".." or joined.startswith("../") or "\0" in target:
            raise TarballRefused(f"the archive's symlink {name!r} points out of the tree ({target[:200]!r})")
        links.add(name)


def check_tarball(data: bytes, *, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> TreeListing:
    """The archive's entry count and file bytes, or :class:`TarballRefused` (see the module docstring)."""
    seen: set[str] = set()
    links: set[str] = set()
    files: set[str] = set()
    size = 0
    for _tar, member in _members(data):
        name = _name(member)
        if name in seen:
            raise TarballRefused(f"the archive names {name!r} twice")
        seen.add(name)
        _judge(member, name, links)
        if member.isfile():
            size += member.size
            files.add(name)
        if len(seen) > max_entries or size > max_bytes:
            raise TarballRefused(f"the archive is over the caps ({max_entries} entries, {max_bytes} bytes of files)")
    return TreeListing(len(seen), size, frozenset(files))


def read_files(data: bytes, names: frozenset[str] | set[str], cap: int) -> dict[str, bytes]:
    """The contents of the regular files ``names`` of a checked archive (each at most ``cap``
    bytes; a larger one is left out): what the API plans a run from (its pipeline file and the
    files that includes), without unpacking anything."""
    found: dict[str, bytes] = {}
    for tar, member in _members(data):
        name = _name(member)
        if name in names and member.isfile() and member.size <= cap:
            source = tar.extractfile(member)
            if source is not None:
                found[name] = source.read()
    return found


def unpack_tarball(data: bytes, dest: Path, *, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES,
                   ) -> list[str]:
    """Unpack the archive into the existing empty directory ``dest``; its entries, in order."""
    check_tarball(data, max_entries=max_entries, max_bytes=max_bytes)
    top = os.open(dest, _DIR_FLAGS)
    dirs: dict[str, int] = {"": top}
    written: list[str] = []
    try:
        for tar, member in _members(data):
            name = _name(member)
            parent, _sep, leaf = name.rpartition("/")
            fd = _directory(dirs, parent)
            if member.isdir():
                with contextlib.suppress(FileExistsError):
                    os.mkdir(leaf, 0o755, dir_fd=fd)
                _directory(dirs, name)  # it must be a real directory now (not a link in the way)
            elif member.issym():
                os.symlink(member.linkname, leaf, dir_fd=fd)
            else:
                mode = 0o755 if member.mode & 0o111 else 0o644
                out = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                              dir_fd=fd)
                try:
                    source = tar.extractfile(member)
                    if source is not None:
                        while chunk := source.read(_CHUNK):
                            os.write(out, chunk)
                    os.fchmod(out, mode)
                finally:
                    os.close(out)
            written.append(name)
    except OSError as exc:
        raise TarballRefused(f"the archive cannot be unpacked: {exc}") from None
    finally:
        for fd in dirs.values():
            os.close(fd)
    return written


def _directory(dirs: dict[str, int], path: str) -> int:
    """An fd of ``path`` under the top, each missing directory made, none followed if a link."""
    if path in dirs:
        return dirs[path]
    parent, _sep, leaf = path.rpartition("/")
    fd = _directory(dirs, parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(leaf, 0o755, dir_fd=fd)
    dirs[path] = os.open(leaf, _DIR_FLAGS, dir_fd=fd)
    return dirs[path]
