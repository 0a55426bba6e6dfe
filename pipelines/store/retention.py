"""Artifact expiry and the trust-separated build cache (adapter; "now" is passed in).

Caches are keyed by (key, trust): a lookup only ever sees entries written at the same trust
level, so what an untrusted run (a fork's merge request) wrote can never be restored into a
trusted run, and a trusted run's cache (which may hold secrets-derived files) never leaks into
an untrusted one.

The store deletes rows, never files: :func:`expire_artifacts` returns what it removed so the
periodic cleanup task deletes the files after the commit.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from pipelines.store.models import CacheEntry
from pipelines.store.statements import (
    ARTIFACT_WITH_BLOB,
    CACHE_ENTRY,
    CACHE_WITH_BLOB,
    DELETE_ARTIFACTS,
    EXPIRED_ARTIFACTS,
    INSERT_CACHE_ENTRY,
    UPDATE_CACHE_ENTRY,
)
from pipelines.store.transitions.creation import TRUST_LEVELS, Trust


@dataclass(frozen=True, slots=True)
class ExpiredArtifact:
    """An artifact whose row was deleted: the cleanup task deletes its file."""

    run_id: str
    job_id: str
    path: str
    sha256: str


def expire_artifacts(session: Session, now: dt.datetime, limit: int = 1000) -> list[ExpiredArtifact]:
    """Delete artifact rows whose ``expires_at`` has passed; returns them."""
    connection = session.connection()
    rows = connection.execute(EXPIRED_ARTIFACTS, {"p_now": now, "p_limit": limit}).all()
    if not rows:
        return []
    connection.execute(DELETE_ARTIFACTS, {"p_ids": [row.id for row in rows]})
    return [ExpiredArtifact(row.run_id, row.job_id, row.path, row.sha256) for row in rows]


def cache_lookup(session: Session, key: str, trust: Trust) -> CacheEntry | None:
    """The cache entry written under ``key`` at exactly this trust level, if any."""
    _check_trust(trust)
    row = session.connection().execute(CACHE_ENTRY, {"p_key": key, "p_trust": trust}).first()
    return None if row is None else CacheEntry(**row._mapping)


def cache_store(session: Session, key: str, trust: Trust, sha256: str, size: int, now: dt.datetime) -> CacheEntry:
    """Record (or replace) the cache archive saved under (``key``, ``trust``)."""
    _check_trust(trust)
    connection = session.connection()
    values = {"p_key": key, "p_trust": trust, "p_sha256": sha256, "p_size": size, "p_now": now}
    if connection.execute(UPDATE_CACHE_ENTRY, values).rowcount == 0:
        try:
            with connection.begin_nested():
                connection.execute(INSERT_CACHE_ENTRY, values)
        except IntegrityError:  # another job saved the same key at that moment: the later one wins
            connection.execute(UPDATE_CACHE_ENTRY, values)
    return CacheEntry(key=key, trust=trust, sha256=sha256, size=size, created_at=now)


def _check_trust(trust: str) -> None:
    if trust not in TRUST_LEVELS:
        raise ValueError(f"trust must be one of {TRUST_LEVELS}, not {trust!r}")


def blob_referenced(session: Session, sha256: str) -> bool:
    """Whether any artifact row or cache entry still names the stored file ``sha256`` (retention
    asks before it removes the file)."""
    connection = session.connection()
    if connection.execute(ARTIFACT_WITH_BLOB, {"p_sha256": sha256}).first() is not None:
        return True
    return connection.execute(CACHE_WITH_BLOB, {"p_sha256": sha256}).first() is not None
