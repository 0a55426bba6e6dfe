"""Writing a file where others may read it, without ever showing a half-written one (adapter).

The artifact store, the API's intake of uploads, the image store and the pulled-image records
all write this way, so the mechanics live once, here, below ``api`` and ``worker``:

- :func:`open_temp`: a temporary nobody else can name, an unnamed ``O_TMPFILE`` in the target
  directory (a unique ``mkstemp`` name where the filesystem has none);
- :func:`link_temp`: that temporary given its final name with ``linkat``, which never replaces
  an existing file (content-addressed stores keep the first intact copy);
- :func:`write_atomic`: small records replaced whole (unique temporary, fsync, rename), relative
  to a directory fd and never through a symlink.

>>> import tempfile
>>> d = os.open(tempfile.mkdtemp(), os.O_RDONLY | os.O_DIRECTORY)
>>> write_atomic(d, "meta.json", b"{}"); os.listdir(d)
['meta.json']
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path


def open_temp(directory: Path, mode: int, *, dir_mode: int = 0o777) -> tuple[int, str | None]:
    """A fresh temporary in ``directory`` (made with ``dir_mode`` if missing): (fd, None) for an
    unnamed O_TMPFILE, else (fd, its name)."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode), None
    except FileNotFoundError:
        directory.mkdir(parents=True, exist_ok=True, mode=dir_mode)
        return open_temp(directory, mode, dir_mode=dir_mode)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    import tempfile  # only where O_TMPFILE is missing: kept off the exec start-up path

    fd, name = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    os.fchmod(fd, mode)
    return fd, name


def link_temp(fd: int, temp_name: str | None, parent: int, name: str) -> None:
    """Give the temporary the name ``name`` in dir fd ``parent``; FileExistsError if that name
    exists (a link never replaces)."""
    # linkat(AT_SYMLINK_FOLLOW) on the fd's /proc link; CPython calls plain link(2), which does
    # not follow, unless a dir fd is given (hence dst_dir_fd even when it would not be needed)
    source = f"/proc/self/fd/{fd}" if temp_name is None else temp_name
    os.link(source, name, dst_dir_fd=parent, follow_symlinks=temp_name is None)


def write_atomic(dir_fd: int, name: str, data: bytes, mode: int = 0o600) -> None:
    """``name`` in ``dir_fd`` replaced by ``data`` through a unique temporary, fsync and a rename."""
    tmp = f".{name}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
