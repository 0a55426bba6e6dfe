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

import sqlalchemy as sa
from sqlmodel import Session, col, select

from pipelines.store.models import Artifact, CacheEntry, Job
from pipelines.store.transitions import TRUST_LEVELS, Trust


@dataclass(frozen=True, slots=True)
class ExpiredArtifact:
    """An artifact whose row was deleted: the cleanup task deletes its file."""

    run_id: str
    job_id: str
    path: str
    sha256: str


def expire_artifacts(session: Session, now: dt.datetime, limit: int = 1000) -> list[ExpiredArtifact]:
    """Delete artifact rows whose ``expires_at`` has passed; returns them."""
    rows = session.exec(
        select(Artifact, Job.run_id)
        .join(Job, col(Job.id) == col(Artifact.job_id))
        .where(col(Artifact.expires_at).is_not(None), col(Artifact.expires_at) <= now)
        .order_by(col(Artifact.expires_at))
        .limit(limit)
    ).all()
    if not rows:
        return []
    session.exec(sa.delete(Artifact).where(col(Artifact.id).in_([a.id for a, _ in rows])))
    return [ExpiredArtifact(run_id, a.job_id, a.path, a.sha256) for a, run_id in rows]


def artifacts_of(session: Session, job_id: str) -> list[Artifact]:
    """A job's artifacts that have not expired (rows, by path)."""
    return list(session.exec(select(Artifact).where(Artifact.job_id == job_id).order_by(col(Artifact.path))).all())


def cache_lookup(session: Session, key: str, trust: Trust) -> CacheEntry | None:
    """The cache entry written under ``key`` at exactly this trust level, if any."""
    _check_trust(trust)
    return session.get(CacheEntry, (key, trust))


def cache_store(session: Session, key: str, trust: Trust, sha256: str, size: int, now: dt.datetime) -> CacheEntry:
    """Record (or replace) the cache archive saved under (``key``, ``trust``)."""
    _check_trust(trust)
    entry = session.get(CacheEntry, (key, trust))
    if entry is None:
        entry = CacheEntry(key=key, trust=trust, sha256=sha256, size=size, created_at=now)
    else:
        entry.sha256, entry.size, entry.created_at = sha256, size, now
    session.add(entry)
    session.flush()
    return entry


def _check_trust(trust: str) -> None:
    if trust not in TRUST_LEVELS:
        raise ValueError(f"trust must be one of {TRUST_LEVELS}, not {trust!r}")


def blob_referenced(session: Session, sha256: str) -> bool:
    """Whether any artifact row or cache entry still names the stored file ``sha256`` (retention
    asks before it removes the file)."""
    if session.exec(select(Artifact.id).where(Artifact.sha256 == sha256).limit(1)).first() is not None:
        return True
    return session.exec(select(CacheEntry.key).where(CacheEntry.sha256 == sha256).limit(1)).first() is not None
