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

import sqlalchemy as sa
from sqlmodel import Session, col, select, update

from pipelines.store.models import Job, Outbox, Run


def enqueue(session: Session, job: Job, now: dt.datetime) -> None:
    """Make ``job`` queued and announce it, in the caller's transaction."""
    mark_queued(job, now)
    session.add(job)
    session.add(Outbox(job_id=job.id, created_at=now))


def mark_queued(job: Job, now: dt.datetime) -> None:
    """The fields of a queued job (the caller writes it, and its outbox row)."""
    job.status = "queued"
    job.queued_at = now
    job.lease_owner = None
    job.lease_expires_at = None
    job.deadline_at = None


def pending_outbox(session: Session, limit: int = 100) -> list[str]:
    """Job ids with an unpublished outbox row, oldest first, each once."""
    rows = session.exec(
        select(Outbox.job_id).where(col(Outbox.published_at).is_(None)).order_by(col(Outbox.id)).limit(limit)
    ).all()
    return list(dict.fromkeys(rows))


def mark_published(session: Session, job_ids: list[str], now: dt.datetime) -> int:
    """Mark every unpublished outbox row of ``job_ids`` published; returns how many."""
    if not job_ids:
        return 0
    result = session.exec(
        update(Outbox)
        .where(col(Outbox.job_id).in_(job_ids), col(Outbox.published_at).is_(None))
        .values(published_at=now)
    )
    return int(result.rowcount)


def mark_unpublished(session: Session, job_ids: list[str]) -> int:
    """Undo :func:`mark_published` for ``job_ids`` (a publisher that marks rows in the transaction
    that writes them, then fails to send); returns how many rows are pending again."""
    if not job_ids:
        return 0
    result = session.exec(
        update(Outbox).where(col(Outbox.job_id).in_(job_ids), col(Outbox.published_at).is_not(None))
        .values(published_at=None)
    )
    return int(result.rowcount)


def requeue_stale(session: Session, now: dt.datetime, older_than_s: float, limit: int = 500) -> list[str]:
    """Re-announce jobs queued more than ``older_than_s`` ago and not claimed since.

    Each gets a fresh outbox row and its ``queued_at`` reset, so it is re-announced at most once
    per period. Jobs of cancelled runs are left alone.
    """
    cutoff = now - dt.timedelta(seconds=older_than_s)
    # correlated: one primary-key look-up per job (an IN over live runs read every run)
    live_run = sa.exists().where(col(Run.id) == col(Job.run_id), col(Run.cancelled).is_(sa.false()))
    jobs = session.exec(
        select(Job)
        .where(Job.status == "queued", col(Job.queued_at) <= cutoff, live_run)
        .order_by(col(Job.queued_at))
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for job in jobs:
        job.queued_at = now
        session.add(job)
        session.add(Outbox(job_id=job.id, created_at=now))
    return [job.id for job in jobs]


def prune_outbox(session: Session, published_before: dt.datetime) -> int:
    """Delete outbox rows published before ``published_before``; returns how many."""
    result = session.exec(
        sa.delete(Outbox).where(col(Outbox.published_at).is_not(None), col(Outbox.published_at) < published_before)
    )
    return int(result.rowcount)
