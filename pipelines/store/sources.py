"""Where a run's files come from: its commit or its uploaded tree (adapter).

A web-hook run, or an API run naming a registered repository, records its commit
(:func:`record_commit_source`): the worker fetches it into its mirror of the repository and
checks it out once per run. An API run with an uploaded tree stores the archive once, by its
SHA-256 (:func:`store_archive`), and records it (:func:`record_archive_source`). The worker
reads both back (:func:`run_source`, :func:`archive_bytes`) and asks which of the trees it
made belong to runs that have ended (:func:`ended_runs`), to remove them.

Every statement is a prepared Core statement, run on the caller's session and transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from pipelines.store.models import Run, RunSource, SourceArchive, UTCDateTime

_SOURCES: Any = RunSource.__table__  # type: ignore[attr-defined]
_ARCHIVES: Any = SourceArchive.__table__  # type: ignore[attr-defined]
_RUNS: Any = Run.__table__  # type: ignore[attr-defined]

_INSERT_SOURCE = sa.insert(_SOURCES).values(
    run_id=sa.bindparam("p_run"), kind=sa.bindparam("p_kind"), repo_id=sa.bindparam("p_repo"),
    clone_url=sa.bindparam("p_url"), sha=sa.bindparam("p_sha"), archive_sha256=sa.bindparam("p_archive"))
_READ_SOURCE = sa.select(_SOURCES.c.kind, _SOURCES.c.repo_id, _SOURCES.c.clone_url, _SOURCES.c.sha,
                         _SOURCES.c.archive_sha256).where(_SOURCES.c.run_id == sa.bindparam("p_run"))
_ARCHIVE_EXISTS = sa.select(_ARCHIVES.c.sha256).where(_ARCHIVES.c.sha256 == sa.bindparam("p_sha"))
_INSERT_ARCHIVE = sa.insert(_ARCHIVES).values(
    sha256=sa.bindparam("p_sha"), size=sa.bindparam("p_size"), data=sa.bindparam("p_data"),
    created_at=sa.bindparam("p_now", type_=UTCDateTime()))
_READ_ARCHIVE = sa.select(_ARCHIVES.c.data).where(_ARCHIVES.c.sha256 == sa.bindparam("p_sha"))
_ENDED = sa.select(_RUNS.c.id).where(_RUNS.c.id.in_(sa.bindparam("p_ids", expanding=True)),
                                     _RUNS.c.finished_at.is_not(None))
_KNOWN = sa.select(_RUNS.c.id).where(_RUNS.c.id.in_(sa.bindparam("p_ids", expanding=True)))


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """A run's recorded source: ``kind`` ``commit`` (``repo_id`` may be None once the repository
    was removed: the worker then fetches into a mirror named by the run) or ``archive``."""

    kind: str
    repo_id: str | None
    clone_url: str
    sha: str
    archive_sha256: str | None


def record_commit_source(session: Session, run_id: str, repo_id: str | None, clone_url: str, sha: str) -> None:
    """The run's jobs start with commit ``sha``, fetched from ``clone_url`` (in the run's transaction)."""
    session.connection().execute(_INSERT_SOURCE, {"p_run": run_id, "p_kind": "commit", "p_repo": repo_id,
                                                  "p_url": clone_url, "p_sha": sha, "p_archive": None})


def store_archive(session: Session, sha256: str, data: bytes, now: dt.datetime) -> None:
    """Keep an uploaded tree under its SHA-256 (the same bytes are stored once)."""
    connection = session.connection()
    if connection.execute(_ARCHIVE_EXISTS, {"p_sha": sha256}).first() is None:
        connection.execute(_INSERT_ARCHIVE, {"p_sha": sha256, "p_size": len(data), "p_data": data, "p_now": now})


def record_archive_source(session: Session, run_id: str, sha256: str) -> None:
    """The run's jobs start with the stored tree ``sha256`` (in the run's transaction)."""
    session.connection().execute(_INSERT_SOURCE, {"p_run": run_id, "p_kind": "archive", "p_repo": None,
                                                  "p_url": "", "p_sha": "", "p_archive": sha256})


def run_source(session: Session, run_id: str) -> SourceRecord | None:
    """What the run's jobs start with; None: an empty workspace."""
    row = session.connection().execute(_READ_SOURCE, {"p_run": run_id}).first()
    if row is None:
        return None
    return SourceRecord(row.kind, row.repo_id, row.clone_url, row.sha, row.archive_sha256)


def archive_bytes(session: Session, sha256: str) -> bytes | None:
    row = session.connection().execute(_READ_ARCHIVE, {"p_sha": sha256}).first()
    return None if row is None else bytes(row.data)


def ended_runs(session: Session, run_ids: Sequence[str]) -> set[str]:
    """Which of ``run_ids`` have ended, or are not in the store at all (their files can go)."""
    ids = list(dict.fromkeys(run_ids))
    if not ids:
        return set()
    connection = session.connection()
    ended: set[str] = set(connection.execute(_ENDED, {"p_ids": ids}).scalars())
    known: set[str] = set(connection.execute(_KNOWN, {"p_ids": ids}).scalars())
    return ended | (set(ids) - known)
