"""The outbox: job ids to publish to the broker, written in the transaction that queues them.

A job becomes ``queued`` and gets an outbox row in one commit, so a crash between the commit
and the publish, or a broker that lost its messages, loses nothing: a publisher sends what
:func:`pending_outbox` lists and then calls :func:`mark_published`; :func:`requeue_stale`
re-announces jobs left ``queued`` for too long (their message was published but lost). A
duplicate message is harmless: the claim is a compare-and-set.

A publisher may also mark the rows published in the transaction that writes them, send after
the commit, and call :func:`mark_unpublished` if sending fails (the API does: one transaction
less per run, and no write racing the worker's claim). If it dies between the commit and the
send, :func:`requeue_stale` re-announces the job: the job is late, not lost.
"""

from __future__ import annotations

import datetime as dt

from sqlmodel import Session

from pipelines.store.models import Job
from pipelines.store.statements import (
    INSERT_OUTBOX,
    MARK_PUBLISHED,
    MARK_UNPUBLISHED,
    PENDING_OUTBOX,
    PRUNE_OUTBOX,
    REQUEUE,
    STALE_QUEUED,
)


def mark_queued(job: Job, now: dt.datetime) -> None:
    """The fields of a queued job (the caller writes it, and its outbox row)."""
    job.status = "queued"
    job.queued_at = now
    job.lease_owner = None
    job.lease_expires_at = None
    job.deadline_at = None


def pending_outbox(session: Session, limit: int = 100) -> list[str]:
    """Job ids with an unpublished outbox row, oldest first, each once."""
    rows: list[str] = list(session.connection().execute(PENDING_OUTBOX, {"p_limit": limit}).scalars().all())
    return list(dict.fromkeys(rows))


def mark_published(session: Session, job_ids: list[str], now: dt.datetime) -> int:
    """Mark every unpublished outbox row of ``job_ids`` published; returns how many."""
    if not job_ids:
        return 0
    return int(session.connection().execute(MARK_PUBLISHED, {"p_job_ids": list(job_ids), "p_now": now}).rowcount)


def mark_unpublished(session: Session, job_ids: list[str]) -> int:
    """Undo :func:`mark_published` for ``job_ids`` (a publisher that marks rows in the transaction
    that writes them, then fails to send); returns how many rows are pending again."""
    if not job_ids:
        return 0
    return int(session.connection().execute(MARK_UNPUBLISHED, {"p_job_ids": list(job_ids)}).rowcount)


def requeue_stale(session: Session, now: dt.datetime, older_than_s: float, limit: int = 500) -> list[str]:
    """Re-announce jobs queued more than ``older_than_s`` ago and not claimed since.

    Each gets a fresh outbox row and its ``queued_at`` reset, so it is re-announced at most once
    per period. Jobs of cancelled runs are left alone.
    """
    connection = session.connection()
    cutoff = now - dt.timedelta(seconds=older_than_s)
    job_ids: list[str] = list(connection.execute(STALE_QUEUED, {"p_cutoff": cutoff, "p_limit": limit}).scalars().all())
    if job_ids:
        connection.execute(REQUEUE, {"p_job_ids": job_ids, "p_now": now})
        INSERT_OUTBOX.execute(connection, [{"job_id": job_id, "created_at": now, "published_at": None}
                                           for job_id in job_ids])
    return job_ids


def prune_outbox(session: Session, published_before: dt.datetime) -> int:
    """Delete outbox rows published before ``published_before``; returns how many."""
    return int(session.connection().execute(PRUNE_OUTBOX, {"p_before": published_before}).rowcount)
