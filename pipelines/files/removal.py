"""Removing what retention decided to remove, without ever following a symlink (adapter).

Everything here works relative to a directory fd opened with ``O_NOFOLLOW``, on one checked name
at a time: a name is one path component (no ``/``, not ``.`` or ``..``), a symlink found there is
removed itself (never its target), and a directory is first renamed aside (atomic: whoever looks
for it from then on finds nothing, never a half-removed tree) and then removed by ``shutil.rmtree``
through its ``dir_fd`` — its fd-based walk (``os.scandir`` on fds, ``O_NOFOLLOW`` opens) never
follows a link inside the tree either, which is job data in a checked-out commit. Below
``api`` and ``worker``: the API's store and every worker's use it alike.

>>> import tempfile
>>> d = Path(tempfile.mkdtemp()); (d / "tree").mkdir(); os.symlink("/etc", d / "tree" / "up")
>>> remove_entry(d, "tree"), os.listdir(d), os.path.exists("/etc/passwd")
(True, [], True)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pipelines.identifiers import is_sha256_hex

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
GRACE_S = 3600.0  # a stored file written or kept this recently is never removed


def checked_name(name: str) -> bool:
    """Whether ``name`` is one path component this module may remove.

    >>> checked_name("ab12.git"), checked_name("../x"), checked_name(".."), checked_name("a/b")
    (True, False, False, False)
    """
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


@contextlib.contextmanager
def opened_dir(path: Path) -> Iterator[int | None]:
    """An fd of the directory ``path`` (its last component must not be a symlink); None when it
    is missing or not a directory."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def entries(path: Path, wanted: Callable[[str], object] | None = None) -> list[tuple[str, os.stat_result]]:
    """The names in directory ``path`` with their own ``lstat`` (a symlink is described, not
    followed); nothing when it is missing. With ``wanted``, only the names it accepts, and only
    those are looked at (a directory of every job's log holds far more names than it matches)."""
    found: list[tuple[str, os.stat_result]] = []
    with opened_dir(path) as fd:
        if fd is None:
            return found
        with os.scandir(fd) as scan:
            for item in scan:
                if wanted is not None and not wanted(item.name):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    found.append((item.name, item.stat(follow_symlinks=False)))
    return found


def remove_entry(parent: Path, name: str) -> bool:
    """Remove ``parent/name`` — a file, a symlink (itself) or a whole directory tree — without
    following any symlink; True when something was removed."""
    if not checked_name(name):
        return False
    with opened_dir(parent) as fd:
        if fd is None:
            return False
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=fd)
                return True
            return False
        side = f".gc-{secrets.token_hex(6)}"
        try:
            os.rename(name, side, src_dir_fd=fd, dst_dir_fd=fd)
        except FileNotFoundError:
            return False
        shutil.rmtree(side, dir_fd=fd, ignore_errors=True)
        return True


def remove_blob_if_unused(store: Path, sha256: str, referenced: Callable[[], bool], grace_s: float = GRACE_S) -> bool:
    """Remove the stored file ``store/<sha[:2]>/<sha>`` unless something names it; True when removed.

    The protocol of the worker's store (``worker.sandbox.blobs.remove_if_unused``), for every
    content-addressed store of this layout (the API's copies too): the file is first renamed aside,
    so a writer storing the same bytes now finds no file and links its own; then its age (every
    write or keep touches it) and ``referenced()`` are judged, and a file touched within
    ``grace_s`` or still named is put back (unless a new copy took its name meanwhile)."""
    if not is_sha256_hex(sha256):
        return False
    with opened_dir(store / sha256[:2]) as parent:
        if parent is None:
            return False
        side = f".gc-{secrets.token_hex(8)}"
        try:
            os.rename(sha256, side, src_dir_fd=parent, dst_dir_fd=parent)
        except FileNotFoundError:
            return False
        st = os.stat(side, dir_fd=parent, follow_symlinks=False)
        if time.time() - st.st_mtime < grace_s or referenced():
            with contextlib.suppress(FileExistsError):
                os.link(side, sha256, src_dir_fd=parent, dst_dir_fd=parent, follow_symlinks=False)
            os.unlink(side, dir_fd=parent)
            return False
        os.unlink(side, dir_fd=parent)
        return True
