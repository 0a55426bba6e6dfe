"""Expiry of what forges and uploaded sources leave in the database (adapter; "now" is passed in).

- commit statuses (the ``commit_status`` outbox) that were done with — sent, refused for good, or
  superseded (``sent_at`` set) — before a cut-off; a status still being retried is never removed;
- web-hook deliveries received before a cut-off. A delivery's row *is* its replay protection (its
  delivery id and body hash, unique per repository), so the cut-off must stay beyond the forges'
  redelivery windows (the settings refuse less than a week: see :mod:`pipelines.retention`);
- uploaded trees (``source_archive``) that no run still needs: none of the runs that name it is
  unfinished or ended after ``ended_before`` (a retry reopens an ended run and unpacks the tree
  again, so it is kept a while after the end), and it was stored before ``stored_before`` (a tree
  being uploaded for a run not committed yet is not named by it yet).

It also answers which mirrors' repositories the store still knows. Every function deletes in
batches of ``limit`` and returns how many rows went, so one call never holds a long write lock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from pipelines.store.models import CommitStatus, Repository, Run, RunSource, SourceArchive, UTCDateTime, WebhookDelivery

_STATUSES: Any = CommitStatus.__table__  # type: ignore[attr-defined]
_DELIVERIES: Any = WebhookDelivery.__table__  # type: ignore[attr-defined]
_ARCHIVES: Any = SourceArchive.__table__  # type: ignore[attr-defined]
_SOURCES: Any = RunSource.__table__  # type: ignore[attr-defined]
_RUNS: Any = Run.__table__  # type: ignore[attr-defined]
_REPOS: Any = Repository.__table__  # type: ignore[attr-defined]


def _at(name: str) -> Any:
    return sa.bindparam(name, type_=UTCDateTime())


# oldest first on ix_commit_status_due (in id order the database read every status kept)
_DONE_STATUSES = (sa.select(_STATUSES.c.id)
                  .where(_STATUSES.c.sent_at.is_not(None), _STATUSES.c.sent_at < _at("p_before"))
                  .order_by(_STATUSES.c.sent_at).limit(sa.bindparam("p_limit")))
_DELETE_STATUSES = sa.delete(_STATUSES).where(_STATUSES.c.id.in_(sa.bindparam("p_ids", expanding=True)))
# oldest first on the cut-off's own index (in id order the database read every delivery kept)
_OLD_DELIVERIES = (sa.select(_DELIVERIES.c.id).where(_DELIVERIES.c.received_at < _at("p_before"))
                   .order_by(_DELIVERIES.c.received_at).limit(sa.bindparam("p_limit")))
_DELETE_DELIVERIES = sa.delete(_DELIVERIES).where(_DELIVERIES.c.id.in_(sa.bindparam("p_ids", expanding=True)))
_STILL_NEEDED = (
    sa.select(_SOURCES.c.run_id)
    .join(_RUNS, _RUNS.c.id == _SOURCES.c.run_id)
    .where(_SOURCES.c.archive_sha256 == _ARCHIVES.c.sha256,
           sa.or_(_RUNS.c.finished_at.is_(None), _RUNS.c.finished_at >= _at("p_ended_before")))
)
_UNNEEDED_ARCHIVES = (sa.select(_ARCHIVES.c.sha256)
                      .where(_ARCHIVES.c.created_at < _at("p_stored_before"), ~_STILL_NEEDED.exists())
                      .order_by(_ARCHIVES.c.sha256).limit(sa.bindparam("p_limit")))
_DELETE_ARCHIVES = sa.delete(_ARCHIVES).where(_ARCHIVES.c.sha256.in_(sa.bindparam("p_ids", expanding=True)))
_KNOWN_REPOS = sa.select(_REPOS.c.id).where(_REPOS.c.id.in_(sa.bindparam("p_ids", expanding=True)))


def _delete_in_batches(session: Session, select: Any, delete: Any, values: dict[str, Any], limit: int) -> int:
    connection = session.connection()
    removed = 0
    while True:
        ids: list[Any] = list(connection.execute(select, {**values, "p_limit": limit}).scalars())
        if not ids:
            return removed
        connection.execute(delete, {"p_ids": ids})
        removed += len(ids)
        if len(ids) < limit:
            return removed


def expire_commit_statuses(session: Session, done_before: dt.datetime, limit: int = 1000) -> int:
    """Delete statuses done with (``sent_at``) before ``done_before``; how many."""
    return _delete_in_batches(session, _DONE_STATUSES, _DELETE_STATUSES, {"p_before": done_before}, limit)


def expire_deliveries(session: Session, received_before: dt.datetime, limit: int = 1000) -> int:
    """Delete web-hook deliveries received before ``received_before`` (and with them their replay
    protection: see the module docstring); how many."""
    return _delete_in_batches(session, _OLD_DELIVERIES, _DELETE_DELIVERIES, {"p_before": received_before}, limit)


def expire_source_archives(session: Session, *, ended_before: dt.datetime, stored_before: dt.datetime,
                           limit: int = 100) -> int:
    """Delete uploaded trees no run needs any more (see the module docstring); how many. The
    batch is small: each row holds a whole tree."""
    values = {"p_ended_before": ended_before, "p_stored_before": stored_before}
    return _delete_in_batches(session, _UNNEEDED_ARCHIVES, _DELETE_ARCHIVES, values, limit)


def known_repositories(session: Session, repo_ids: Sequence[str]) -> set[str]:
    """Which of ``repo_ids`` are registered repositories (a mirror of any other can go)."""
    ids = list(dict.fromkeys(repo_ids))
    if not ids:
        return set()
    return set(session.connection().execute(_KNOWN_REPOS, {"p_ids": ids}).scalars())
