"""Artifact expiry and the trust-separated build cache (adapter; "now" is passed in).

Caches are keyed by (key, trust): a lookup only ever sees entries written at the same trust
level, so what an untrusted run (a fork's merge request) wrote can never be restored into a
trusted run, and a trusted run's cache (which may hold secrets-derived files) never leaks into
an untrusted one.

The store deletes rows, never files: :func:`expire_artifacts` returns what it removed so the
periodic cleanup task deletes the files after the commit. Each file a row stopped naming (an
expired artifact, a cache archive a newer save replaced) is also written to ``expired_blob``: the
other hosts holding copies of it (the API's store in ``http`` deployments, the workers that fetched
it) read those from a cursor of their own (:func:`expired_blobs_after`) and remove their copies
(:mod:`pipelines.retention`); :func:`prune_expired_blobs` drops them after a week.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from pipelines.store.cache_blobs import LIVE_MEMBER, members_of_unnamed, record_members
from pipelines.store.models import CacheEntry, ExpiredBlob, UTCDateTime
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

_EXPIRED: Any = ExpiredBlob.__table__  # type: ignore[attr-defined]
_INSERT_EXPIRED = sa.insert(_EXPIRED).values(sha256=sa.bindparam("p_sha256"),
                                             expired_at=sa.bindparam("p_now", type_=UTCDateTime()))
_EXPIRED_AFTER = (sa.select(_EXPIRED.c.id, _EXPIRED.c.sha256, _EXPIRED.c.expired_at)
                  .where(_EXPIRED.c.id > sa.bindparam("p_after"))
                  .order_by(_EXPIRED.c.id).limit(sa.bindparam("p_limit")))
_LAST_EXPIRED = sa.select(sa.func.max(_EXPIRED.c.id))
_PRUNE_EXPIRED = sa.delete(_EXPIRED).where(_EXPIRED.c.expired_at < sa.bindparam("p_before", type_=UTCDateTime()))


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
    _note_expired(session, [row.sha256 for row in rows], now)
    return [ExpiredArtifact(row.run_id, row.job_id, row.path, row.sha256) for row in rows]


def _note_expired(session: Session, shas: list[str], now: dt.datetime) -> None:
    unique = sorted({sha for sha in shas if sha})
    if unique:
        session.connection().execute(_INSERT_EXPIRED, [{"p_sha256": sha, "p_now": now} for sha in unique])


def expired_blobs_after(session: Session, after_id: int, expired_before: dt.datetime,
                        limit: int = 1000) -> list[tuple[int, str]]:
    """The stored files rows stopped naming, after the cursor ``after_id`` and before
    ``expired_before``: (id, sha256), in order, stopping at the first noted later (ids grow with
    time, so a cursor never skips one that is still too young)."""
    rows = session.connection().execute(_EXPIRED_AFTER, {"p_after": after_id, "p_limit": limit})
    found: list[tuple[int, str]] = []
    for row in rows:
        if row.expired_at >= expired_before:
            break
        found.append((int(row.id), str(row.sha256)))
    return found


def last_expired_blob_id(session: Session) -> int:
    """The newest noted expired file's id (0: none); a cursor past it belongs to another database."""
    return int(session.connection().execute(_LAST_EXPIRED).scalar() or 0)


def prune_expired_blobs(session: Session, before: dt.datetime) -> int:
    """Forget the expired files noted before ``before`` (a host away longer keeps its copies of
    them until its own artifacts expire them again); how many."""
    return int(session.connection().execute(_PRUNE_EXPIRED, {"p_before": before}).rowcount or 0)


def cache_lookup(session: Session, key: str, trust: Trust) -> CacheEntry | None:
    """The cache entry written under ``key`` at exactly this trust level, if any."""
    _check_trust(trust)
    row = session.connection().execute(CACHE_ENTRY, {"p_key": key, "p_trust": trust}).first()
    return None if row is None else CacheEntry(**row._mapping)


def cache_store(session: Session, key: str, trust: Trust, sha256: str, size: int, now: dt.datetime,
                members: Sequence[str] = ()) -> CacheEntry:
    """Record (or replace) the cache archive saved under (``key``, ``trust``); ``members``: the
    stored files its manifest lists (:mod:`pipelines.store.cache_blobs`)."""
    _check_trust(trust)
    connection = session.connection()
    values = {"p_key": key, "p_trust": trust, "p_sha256": sha256, "p_size": size, "p_now": now}
    record_members(session, sha256, members)
    before = connection.execute(CACHE_ENTRY, {"p_key": key, "p_trust": trust}).first()
    if connection.execute(UPDATE_CACHE_ENTRY, values).rowcount == 0:
        try:
            with connection.begin_nested():
                connection.execute(INSERT_CACHE_ENTRY, values)
        except IntegrityError:  # another job saved the same key at that moment: the later one wins
            connection.execute(UPDATE_CACHE_ENTRY, values)
    if before is not None and before.sha256 != sha256:
        # the archive it replaces, and the files only it listed: other hosts drop their copies
        _note_expired(session, [before.sha256, *members_of_unnamed(session, before.sha256)], now)
    return CacheEntry(key=key, trust=trust, sha256=sha256, size=size, created_at=now)


def _check_trust(trust: str) -> None:
    if trust not in TRUST_LEVELS:
        raise ValueError(f"trust must be one of {TRUST_LEVELS}, not {trust!r}")


def blob_referenced(session: Session, sha256: str) -> bool:
    """Whether any artifact row or cache entry still names the stored file ``sha256``, or it is a
    file of a manifest a cache entry names (retention asks before it removes the file)."""
    connection = session.connection()
    for statement in (ARTIFACT_WITH_BLOB, CACHE_WITH_BLOB, LIVE_MEMBER):
        if connection.execute(statement, {"p_sha256": sha256}).first() is not None:
            return True
    return False
