"""A job's kept artifacts as one archive, ``.zip`` or ``.tar.gz``, written as it is sent (adapter).

Nothing is built in memory or on disk: the archive is produced piece by piece while the stored
files are read (a chunk of a file in, its compressed bytes out), so a job with gigabytes of
artifacts costs the API a megabyte of buffer. ``zipfile`` (stdlib) writes to a stream that cannot
seek by putting each entry's sizes and CRC in a data descriptor after its data; the tar stream is
``TarInfo.tobuf`` headers (stdlib, PAX format for long or non-ASCII paths) around the file data,
gzip-compressed with ``zlib`` as it goes. Entry names are the recorded artifact paths, checked
again against the artifact-path grammar (relative, no ``..``), so no archive can write outside the
folder it is unpacked in.

Every file is checked against its recorded sha256 before the first byte is sent (a damaged store
is a 500 ``artifact_corrupt`` or a 404, as for one download), and hashed again while it is read: a
file that changed in between ends the stream with an error (the client sees a truncated archive,
never a complete one with other bytes in it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from sqlmodel import Session

from api.artifacts import artifact_file, list_artifacts
from api.errors import NotFound
from pipelines.identifiers import artifact_path_problem

log = logging.getLogger("sandpit.api")
CHUNK = 1 << 20


class ArchiveBroken(Exception):
    """A stored file changed while its archive was being sent: the stream is ended."""


def archive_members(session: Session, artifacts_dir: Path, job_id: str) -> list[tuple[str, Path, str, int]]:
    """(path, stored file, sha256, size) of each artifact of the job, newest row per path, every
    one checked against its sha256 now; 404 when the job kept none."""
    newest = {}
    for row in sorted(list_artifacts(session, job_id), key=lambda r: r.id or 0):
        newest[row.path] = row
    members = []
    for path, row in sorted(newest.items()):
        if artifact_path_problem(path) is not None:
            log.error("job %s: artifact path %r is not a workspace path; left out of its archive", job_id, path[:300])
            continue
        members.append((path, artifact_file(artifacts_dir, row), row.sha256, row.size))
    if not members:
        raise NotFound(f"job {job_id} kept no artifacts")
    return members


class _Outbox:
    """The file the archive writer writes to: it hands over what was written since the last look."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._offset = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self._offset

    def flush(self) -> None:
        return None

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _chunks(stored: Path, sha256: str, name: str) -> Iterator[bytes]:
    fd = os.open(stored, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        digest = hashlib.sha256()
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
            yield chunk
    finally:
        os.close(fd)
    if digest.hexdigest() != sha256:
        log.error("artifact %s: stored file %s changed while it was archived; the archive is cut off", name, stored)
        raise ArchiveBroken(name)


def zip_stream(members: list[tuple[str, Path, str, int]]) -> Iterator[bytes]:
    out = _Outbox()
    now = time.localtime()
    stamp = (now.tm_year, now.tm_mon, now.tm_mday, now.tm_hour, now.tm_min, now.tm_sec)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:  # type: ignore[call-overload]
        for name, stored, sha, size in members:
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16
            info.file_size = size  # lets zipfile choose zip64 for a file past 4 GiB before writing it
            with archive.open(info, "w") as entry:
                for chunk in _chunks(stored, sha, name):
                    entry.write(chunk)
                    if data := out.take():
                        yield data
            yield out.take()
    yield out.take()


def tar_gz_stream(members: list[tuple[str, Path, str, int]]) -> Iterator[bytes]:
    gz = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: the gzip container
    now = int(time.time())
    for name, stored, sha, size in members:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime, info.type = size, 0o644, now, tarfile.REGTYPE
        yield gz.compress(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        written = 0
        for chunk in _chunks(stored, sha, name):
            written += len(chunk)
            if written > size:
                raise ArchiveBroken(name)
            yield gz.compress(chunk)
        if written != size:
            raise ArchiveBroken(name)
        yield gz.compress(b"\0" * (-size % tarfile.BLOCKSIZE))
    yield gz.compress(b"\0" * (2 * tarfile.BLOCKSIZE))  # the end-of-archive marker
    yield gz.flush()
