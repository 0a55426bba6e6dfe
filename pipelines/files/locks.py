"""File locks that die with their holder: ``flock(2)`` on a lock file, held through one open fd.

The kernel drops an ``flock`` when the last fd of its open file is closed, so a lock held by a
process that is SIGKILLed is released by the kernel, never left for someone to clean up: that is
why every lease of sandpit (a job's owner lock, a uid slot, an instance claim, the migration and
mirror locks) is one. This module is the one place that opens such a file and takes the lock:

- :func:`hold` waits for the lock, :func:`try_hold` does not (None when someone else has it);
  both return a :class:`FileLock`, released by ``release()``/``close()`` or at the end of a
  ``with`` block. ``shared=True`` takes a shared lock (many holders) instead of an exclusive one.
- The file is opened ``O_NOFOLLOW | O_CLOEXEC``: a symlink planted at the lock's name is refused
  (``ELOOP``) rather than followed, and no child process inherits the lock. A new file is
  created ``0600`` (``mode=``) unless ``create=False``; ``dir_fd=`` opens the name beneath an
  open directory.
- :func:`lock_fd` takes the lock on an fd the caller owns (the lock then lives as long as that
  fd); :func:`is_held` asks whether a live process holds a lock file, without creating one.
- A lock file may be removed, but only by a holder of its lock (the owner at its end, a reaper
  that took a dead owner's lock). A taker checks, once it holds the lock, that the name still
  names the file it locked, and takes the lock again on what the name names now when it does
  not: between its open and its lock the file may have been unlinked by such a holder, and a
  lock on an unlinked file would be a lease nobody else can see (the reaper then took a starting
  job for a dead one).
- :func:`is_held` looks by taking the lock for a moment, so a taker that comes at that moment is
  told the lock is busy: a taker that must not fail for a look retries for a few milliseconds
  (:func:`take_own`).

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "a.lock")
>>> with hold(path) as lock:
...     other = try_hold(path)
...     (lock.held, other, is_held(path))
(True, None, True)
>>> is_held(path), oct(os.stat(path).st_mode & 0o777)
(False, '0o600')
"""

from __future__ import annotations

import fcntl
import os

__all__ = ["FileLock", "hold", "is_held", "lock_fd", "open_lock_file", "take_own", "try_hold", "unlock_fd"]

_OPEN = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW


class FileLock:
    """An ``flock`` held through ``fd`` (owned by this object) on the file at ``path``.

    ``release()`` (or ``close()``, for ``contextlib.closing`` and exit stacks) closes the fd, and
    so drops the lock; it is idempotent. The fd stays usable while the lock is held, e.g. to write
    the holder's pid into the file.
    """

    def __init__(self, fd: int, path: str | os.PathLike[str] | None = None) -> None:
        self.fd: int | None = fd
        self.path = path

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    close = release

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"FileLock({self.path!r}, {'held' if self.held else 'released'})"


def lock_fd(fd: int, *, shared: bool = False, blocking: bool = True) -> bool:
    """Take the lock on ``fd`` (which the caller keeps and closes); False only when ``blocking`` is
    off and another open file holds a conflicting lock."""
    operation = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        fcntl.flock(fd, operation if blocking else operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def unlock_fd(fd: int) -> None:
    """Let go of the lock taken on ``fd`` with :func:`lock_fd`, keeping the fd open (for a lock
    taken and released many times through one kept file)."""
    fcntl.flock(fd, fcntl.LOCK_UN)


def open_lock_file(path: str | os.PathLike[str], mode: int = 0o600) -> int:
    """An fd of the lock file ``path`` (made ``mode`` if missing, a symlink refused), for
    :func:`lock_fd`/:func:`unlock_fd` by a caller that keeps it."""
    return os.open(path, _OPEN | os.O_CREAT, mode)


def hold(path: str | os.PathLike[str], *, shared: bool = False, create: bool = True, mode: int = 0o600,
         dir_fd: int | None = None) -> FileLock:
    """The lock on ``path``, waiting for it as long as another process holds it (``FileNotFoundError``
    when ``create`` is off and there is no such file; ``OSError`` ``ELOOP`` for a symlink)."""
    lock = _take(path, shared=shared, blocking=True, create=create, mode=mode, dir_fd=dir_fd)
    assert lock is not None  # a blocking flock returns only once it holds the lock
    return lock


def try_hold(path: str | os.PathLike[str], *, shared: bool = False, create: bool = True, mode: int = 0o600,
             dir_fd: int | None = None) -> FileLock | None:
    """The lock on ``path`` if it is free now, else None (the file is then left as it was)."""
    return _take(path, shared=shared, blocking=False, create=create, mode=mode, dir_fd=dir_fd)


def is_held(path: str | os.PathLike[str]) -> bool:
    """Whether a live process holds a lock (shared or exclusive) on the file at ``path``; a missing
    file is a lock nobody holds, and asking never creates one (a symlink there is ``ELOOP``, not an
    answer: a planted name must not pass for a free lock)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        return not lock_fd(fd, blocking=False)
    finally:
        os.close(fd)  # drops the look's own lock, if it got one


def take_own(path: str | os.PathLike[str], *, attempts: int = 50, pause_s: float = 0.001,
             mode: int = 0o600) -> FileLock | None:
    """The exclusive lock on a file only this caller should hold (a fresh job's owner lock), or None
    when someone else holds it: retried for a few milliseconds, so that :func:`is_held`'s
    momentary look is not taken for an owner."""
    import time

    for _ in range(attempts):
        lock = try_hold(path, mode=mode)
        if lock is not None:
            return lock
        time.sleep(pause_s)
    return None


def _take(path: str | os.PathLike[str], *, shared: bool, blocking: bool, create: bool, mode: int,
          dir_fd: int | None) -> FileLock | None:
    flags = _OPEN | os.O_CREAT if create else _OPEN
    while True:
        fd = os.open(path, flags, mode, dir_fd=dir_fd)
        try:
            taken = lock_fd(fd, shared=shared, blocking=blocking)
            if taken and not _still_named(fd, path, dir_fd):
                os.close(fd)  # unlinked by a holder between the open and the lock: the name's file now
                continue
        except BaseException:
            os.close(fd)
            raise
        if not taken:
            os.close(fd)
            return None
        return FileLock(fd, path)


def _still_named(fd: int, path: str | os.PathLike[str], dir_fd: int | None) -> bool:
    here = os.fstat(fd)
    try:
        named = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (named.st_dev, named.st_ino)
