"""Kept artifacts for the API: find a recorded one, and its content-addressed file (adapter).

A download path must equal a path recorded for the job, character for character; the file is
then ``<state_dir>/artifacts/<sha256[:2]>/<sha256>`` built from the row's sha256 only, so no
user input ever becomes part of a filesystem path (``..``, ``%2f`` and friends simply match no
row).
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlmodel import Session, col, select

from api.errors import NotFound
from pipelines.store.errors import JobNotFound
from pipelines.store.models import Artifact, Job
from pipelines.store.retention import artifacts_of

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def list_artifacts(session: Session, job_id: str) -> list[Artifact]:
    if session.get(Job, job_id) is None:
        raise JobNotFound(job_id)
    return artifacts_of(session, job_id)


def find_artifact(session: Session, job_id: str, path: str) -> Artifact:
    """The newest row of ``job_id`` recorded under exactly ``path``, or 404."""
    if session.get(Job, job_id) is None:
        raise JobNotFound(job_id)
    row = session.exec(
        select(Artifact).where(Artifact.job_id == job_id, Artifact.path == path).order_by(col(Artifact.id).desc())
    ).first()
    if row is None:
        raise NotFound(f"job {job_id} kept no artifact at {path[:300]!r}")
    return row


def artifact_file(artifacts_dir: Path, row: Artifact) -> Path:
    """Where the content of ``row`` lives; 404 if it expired or was never stored."""
    if not _SHA256.match(row.sha256):
        raise NotFound(f"artifact {row.path!r} has no stored content")
    path = artifacts_dir / row.sha256[:2] / row.sha256
    if not path.is_file():
        raise NotFound(f"the content of artifact {row.path!r} is no longer stored")
    return path
