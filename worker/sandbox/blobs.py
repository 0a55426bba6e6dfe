"""The content-addressed file store shared by every job of every worker on this host (adapter):
``<store>/<sha256[:2]>/<sha256>``, used for artifacts, cache manifests and cached files.

Many jobs write into it at once (threads of one worker, several workers), so every write

- goes through a temporary nobody else can name: ``O_TMPFILE`` in the store directory, linked
  into place with ``linkat`` through ``/proc/self/fd`` (a file without a name cannot be shared, and
  a worker killed mid-write leaves nothing behind); ``mkstemp`` in the store where the filesystem
  has no ``O_TMPFILE``;
- hashes exactly the bytes written to that temporary, and names the file by that hash (or, when
  the caller knows the hash, refuses to store anything else);
- never rewrites a stored file: ``linkat`` does not replace an existing name. When ``<sha256>``
  exists already it is verified; intact, it is kept and the temporary dropped; otherwise (a torn
  write after a crash, a planted file) the verified temporary is renamed over it, atomically.

Readers check a stored file against its name with :func:`intact` before trusting it. A file is
hashed once per process and file version (:mod:`pipelines.files.digests`, which the API's
downloads use too); a file this module has just written and hashed is noted there as intact.

Errors: :class:`worker.errors.SandboxError` when the store itself cannot be written (a full disk):
that is the platform's failure, never the job's.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

from pipelines.files.digests import fd_intact, remember_intact
from pipelines.files.removal import GRACE_S, remove_blob_if_unused
from pipelines.files.temps import link_temp, open_temp
from pipelines.identifiers import is_sha256_hex
from worker.errors import SandboxError

log = logging.getLogger("sandpit.store")

CHUNK = 1 << 20
FILE_MODE = 0o640


def blob_path(store: Path, sha256: str) -> Path:
    """Where the file with content hash ``sha256`` lives.

    >>> str(blob_path(Path("/s"), "ab" + "0" * 62))[:8]
    '/s/ab/ab'
    """
    if not is_sha256_hex(sha256):
        raise ValueError(f"{sha256!r} is not a sha256 (64 lowercase hex digits): no stored file is named so")
    return store / sha256[:2] / sha256


class BlobTooLarge(Exception):
    """The source had more bytes than the caller allowed (nothing was stored)."""


class SourceUnreadable(Exception):
    """Reading the source failed (nothing was stored); the message is the OS's reason."""


def store_fd(store: Path, src_fd: int, max_bytes: int) -> tuple[str, int]:
    """Copy everything readable from ``src_fd`` into the store; returns (sha256, size).

    Raises :class:`BlobTooLarge` past ``max_bytes`` (checked while reading: a file that grows is
    still bounded), :class:`SandboxError` when the store cannot be written.
    """

    def chunks() -> Iterator[bytes]:
        size = 0
        while True:
            try:
                chunk = os.read(src_fd, CHUNK)
            except OSError as exc:
                raise SourceUnreadable(exc.strerror or str(exc)) from exc
            if not chunk:
                return
            size += len(chunk)
            if size > max_bytes:
                raise BlobTooLarge(size)
            yield chunk

    return _store(store, chunks(), expected=None)


def store_bytes(store: Path, data: bytes) -> str:
    """Store ``data`` under its sha256 (which the written bytes must hash to); returns it."""
    expected = hashlib.sha256(data).hexdigest()
    sha, _size = _store(store, iter([data]), expected=expected)
    return sha


def intact(path: Path, sha256: str) -> bool:
    """Whether the file at ``path`` exists and its bytes hash to ``sha256`` (once per file version)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fd_intact(fd, sha256)
    finally:
        os.close(fd)


def _store(store: Path, chunks: Iterator[bytes], expected: str | None) -> tuple[str, int]:
    try:
        fd, temp_name = open_temp(store, FILE_MODE)
    except OSError as exc:
        raise SandboxError(f"cannot write into the store {store}: {exc.strerror}") from exc
    try:
        digest = hashlib.sha256()
        size = 0
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                digest.update(view[:n])  # what went into the temporary, byte for byte
                view = view[n:]
                size += n
        sha = digest.hexdigest()
        if expected is not None and sha != expected:
            raise SandboxError(f"store write of {expected} produced {sha}: not stored")
        _place(store, fd, temp_name, sha)
        return sha, size
    except OSError as exc:
        raise SandboxError(f"cannot write into the store {store}: {exc.strerror}") from exc
    finally:
        os.close(fd)
        if temp_name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)


def _open_fanout(store: Path, sha: str) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(store / sha[:2], flags)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            os.mkdir(store / sha[:2], 0o755)
        return os.open(store / sha[:2], flags)


def _place(store: Path, fd: int, temp_name: str | None, sha: str) -> None:
    parent = _open_fanout(store, sha)
    try:
        for _attempt in range(3):
            try:
                link_temp(fd, temp_name, parent, sha)
            except FileExistsError:
                pass
            else:
                if temp_name is not None:
                    os.unlink(temp_name)  # before the fstat below: dropping a name moves the ctime too
                remember_intact(sha, os.fstat(fd))  # after the link: linking moved the ctime
                return
            try:
                existing = os.open(sha, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
            except FileNotFoundError:
                continue  # removed between our link and our look (retention): link again
            except OSError:
                existing = -1  # a symlink or worse planted there: replaced below
            try:
                if existing >= 0 and fd_intact(existing, sha):
                    # the same content is stored already: keep that file, drop ours. Touch it, so
                    # the retention sweep (remove_if_unused) sees it as just stored and keeps it
                    try:
                        os.utime(sha, dir_fd=parent, follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # the sweep took it away in between: link ours after all
                    remember_intact(sha, os.fstat(existing))
                    return
            finally:
                if existing >= 0:
                    os.close(existing)
            _replace(fd, temp_name, parent, store, sha)
            return
        raise OSError(errno.EAGAIN, f"{blob_path(store, sha)} keeps changing under the writer")
    finally:
        os.close(parent)


def _replace(fd: int, temp_name: str | None, parent: int, store: Path, sha: str) -> None:
    """Rename the verified temporary over a stored file whose bytes do not match its name."""
    log.error("stored file %s does not match its sha256 (torn or tampered): replacing it", blob_path(store, sha))
    while True:
        side = f".tmp-{secrets.token_hex(8)}"
        try:
            link_temp(fd, temp_name, parent, side)
            break
        except FileExistsError:
            continue
    try:
        os.replace(side, sha, src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(side, dir_fd=parent)
        raise
    remember_intact(sha, os.fstat(fd))




def remove_if_unused(store: Path, sha256: str, referenced: Callable[[], bool], grace_s: float = GRACE_S) -> bool:
    """Remove the stored file ``sha256`` unless something refers to it; True when removed.

    A writer may be storing the same content at this very moment, and its database row comes
    seconds later, so the file is first renamed aside (atomically: a writer then finds no file and
    links its own), and only then are its age (every write or keep touches it) and ``referenced()``
    judged: a file touched within ``grace_s`` or still referenced is put back, unless a new copy
    took its name meanwhile (same content: that one stays). One protocol for every store of this
    layout, the API's copies too: :func:`pipelines.files.removal.remove_blob_if_unused`.
    """
    return remove_blob_if_unused(store, sha256, referenced, grace_s)
