"""Kept artifacts for the API: find a recorded one, and its content-addressed file (adapter).

A download path must equal a path recorded for the job, character for character; the file is
then ``<state_dir>/artifacts/<sha256[:2]>/<sha256>`` built from the row's sha256 only, so no
user input ever becomes part of a filesystem path (``..``, ``%2f`` and friends simply match no
row).

Before a file is served its bytes are checked against the recorded sha256, so a torn or tampered
stored file is refused (500 ``artifact_corrupt``, logged) rather than sent under a hash it does not
have. The check costs one read of the file per process and file version
(:mod:`pipelines.files.digests`, the same check the worker's store makes on its side).
"""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path

from sqlmodel import Session

from api.errors import ApiError, NotFound
from pipelines.files.digests import fd_intact
from pipelines.store.errors import JobNotFound
from pipelines.store.models import Artifact
from pipelines.store.reads import artifact_at, artifacts_of, job_exists

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
log = logging.getLogger("sandpit.api")


class ArtifactCorrupt(ApiError):
    """500: the stored file's bytes do not hash to the sha256 recorded for the artifact."""

    status_code = 500
    code = "artifact_corrupt"


def list_artifacts(session: Session, job_id: str) -> list[Artifact]:
    if not job_exists(session, job_id):
        raise JobNotFound(job_id)
    return artifacts_of(session, job_id)


def find_artifact(session: Session, job_id: str, path: str) -> Artifact:
    """The newest row of ``job_id`` recorded under exactly ``path``, or 404."""
    if not job_exists(session, job_id):
        raise JobNotFound(job_id)
    row = artifact_at(session, job_id, path)
    if row is None:
        raise NotFound(f"job {job_id} kept no artifact at {path[:300]!r}")
    return row


def artifact_file(artifacts_dir: Path, row: Artifact) -> Path:
    """Where the content of ``row`` lives, checked against its sha256; 404 if it expired or was
    never stored, 500 ``artifact_corrupt`` if its bytes are not the recorded ones."""
    if not _SHA256.match(row.sha256):
        raise NotFound(f"artifact {row.path!r} has no stored content")
    path = artifacts_dir / row.sha256[:2] / row.sha256
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"the content of artifact {row.path!r} is no longer stored") from None
    except OSError as exc:
        log.error("artifact %s of job %s: cannot open %s: %s", row.path[:300], row.job_id, path, exc.strerror)
        raise ArtifactCorrupt(f"the stored content of artifact {row.path[:300]!r} cannot be read") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f"the content of artifact {row.path!r} is no longer stored")
        if not fd_intact(fd, row.sha256):
            log.error("artifact %s of job %s: stored file %s does not match its sha256; not served",
                      row.path[:300], row.job_id, path)
            raise ArtifactCorrupt(
                f"the stored content of artifact {row.path[:300]!r} does not match its recorded sha256 "
                f"{row.sha256}; it is not served (the store is damaged: see the server log)")
    finally:
        os.close(fd)
    return path
