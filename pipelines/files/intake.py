"""Receiving a file whose sha256 the sender named, a piece at a time (adapter): the API's end of an
upload from a worker (artifacts, cache manifests and files, a job's final log) and the worker's
end of a fetch from the API. Both sides are a network away from the bytes' origin, so nothing is
believed until it is hashed.

An :class:`Intake` writes into a temporary nobody else can name (``O_TMPFILE`` in the target
directory; a ``mkstemp`` name where the filesystem has none), hashes exactly what it wrote, and
on :meth:`Intake.commit_blob` gives it its content-addressed name ``<store>/<sha[:2]>/<sha>`` with
``linkat`` (never replacing: an existing intact file is kept, one whose bytes do not match its
name is replaced by the verified temporary with an atomic rename), or on :meth:`Intake.commit_as`
a fixed name in the directory (an atomic rename over the old one: a log uploaded again replaces
the first copy whole). A body that is longer than its cap or does not hash to the named sha256
is dropped and nothing is stored (:class:`IntakeTooLarge`, :class:`DigestMismatch`); a writer that dies
mid-way leaves nothing behind.

The same layout and the same checks as the worker's own store (``worker.sandbox.blobs``), kept
here because the API may not import the worker.

>>> import hashlib, tempfile
>>> store = Path(tempfile.mkdtemp())
>>> sha = hashlib.sha256(b"hello").hexdigest()
>>> intake = Intake(store, sha, max_bytes=10)
>>> intake.write(b"hel"); intake.write(b"lo"); intake.commit_blob()
True
>>> (store / sha[:2] / sha).read_bytes()
b'hello'
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
from pathlib import Path

from pipelines.files.digests import fd_intact, remember_intact
from pipelines.files.temps import link_temp, open_temp
from pipelines.identifiers import is_sha256_hex

FILE_MODE = 0o640
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class IntakeError(Exception):
    """Root of what an intake refuses (nothing was stored)."""


class IntakeTooLarge(IntakeError):
    """More bytes came than the cap allows."""


class DigestMismatch(IntakeError):
    """The bytes do not hash to the sha256 the sender named."""

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f"the body hashes to sha256 {got}, not {expected}")
        self.expected, self.got = expected, got


class Intake:
    """One file being received into ``directory`` (see the module docstring). Use as a context
    manager, or call :meth:`abort` on every path that does not commit."""

    def __init__(self, directory: Path, expected_sha256: str, max_bytes: int,
                 temporary: tuple[int, str | None] | None = None) -> None:
        """``temporary``: an empty one :func:`open_temp` made ahead in ``directory`` (FILE_MODE),
        which the intake then owns."""
        if not is_sha256_hex(expected_sha256):
            raise ValueError(f"{expected_sha256[:80]!r} is not a sha256 (64 lowercase hex digits)")
        self.directory, self.expected, self.max_bytes = directory, expected_sha256, max_bytes
        self.size = 0
        self._digest = hashlib.sha256()
        self._fd, self._temp_name = temporary or open_temp(directory, FILE_MODE, dir_mode=0o700)

    def write(self, chunk: bytes) -> None:
        if self.size + len(chunk) > self.max_bytes:
            self.abort()
            raise IntakeTooLarge(f"more than {self.max_bytes} bytes")
        view = memoryview(chunk)
        while view:
            n = os.write(self._fd, view)
            self._digest.update(view[:n])  # what went into the temporary, byte for byte
            view = view[n:]
        self.size += len(chunk)

    def _verified(self) -> None:
        got = self._digest.hexdigest()
        if got != self.expected:
            self.abort()
            raise DigestMismatch(self.expected, got)

    def commit_blob(self) -> bool:
        """Name the file by its sha256 in the content-addressed layout; True when it is new
        (False: an intact copy was there already, and is kept)."""
        self._verified()
        try:
            return _place_blob(self.directory, self._fd, self._temp_name, self.expected)
        finally:
            self.abort()

    def commit_as(self, name: str) -> None:
        """Rename the file to ``directory/name`` (one path component), replacing what was there."""
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"{name[:80]!r} is not one path component")
        self._verified()
        try:
            parent = os.open(self.directory, _DIR_FLAGS)
            try:
                side = _link_aside(self._fd, self._temp_name, parent)
                try:
                    os.replace(side, name, src_dir_fd=parent, dst_dir_fd=parent)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(side, dir_fd=parent)
                    raise
            finally:
                os.close(parent)
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the temporary (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._temp_name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temp_name)
            self._temp_name = None

    def __enter__(self) -> Intake:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.abort()


def _link_aside(fd: int, temp_name: str | None, parent: int) -> str:
    while True:
        side = f".tmp-{secrets.token_hex(8)}"
        try:
            link_temp(fd, temp_name, parent, side)
            return side
        except FileExistsError:
            continue


def _place_blob(store: Path, fd: int, temp_name: str | None, sha: str) -> bool:
    fanout = store / sha[:2]
    try:
        parent = os.open(fanout, _DIR_FLAGS)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            os.mkdir(fanout, 0o755)
        parent = os.open(fanout, _DIR_FLAGS)
    try:
        for _attempt in range(3):
            try:
                link_temp(fd, temp_name, parent, sha)
            except FileExistsError:
                pass
            else:
                remember_intact(sha, os.fstat(fd))
                return True
            try:
                existing = os.open(sha, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
            except FileNotFoundError:
                continue  # removed between our link and our look: link again
            except OSError:
                existing = -1  # a symlink or worse planted there: replaced below
            try:
                if existing >= 0 and fd_intact(existing, sha):
                    with contextlib.suppress(FileNotFoundError):
                        os.utime(sha, dir_fd=parent, follow_symlinks=False)  # just kept: retention spares it
                    return False
            finally:
                if existing >= 0:
                    os.close(existing)
            side = _link_aside(fd, temp_name, parent)
            os.replace(side, sha, src_dir_fd=parent, dst_dir_fd=parent)
            remember_intact(sha, os.fstat(fd))
            return True
        raise OSError(errno.EAGAIN, f"{fanout / sha} keeps changing under the writer")
    finally:
        os.close(parent)
