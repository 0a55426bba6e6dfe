"""Commit statuses for forges: what each watched run last reported, and the outbox of statuses (adapter).

A run from a repository with a forge token is *watched* (:func:`watch_run`, in the transaction
that creates it, with its first status, ``pending``). The API's status sender then, each round:

1. reads the watched runs that have not reported their end (:func:`watched_runs`: the run's
   status and its jobs counted by status, one grouped read), decides what each should report
   now (pure: :mod:`pipelines.forges.statuses`) and, where that changed, records it
   (:func:`report`: a compare-and-set on the watch, and the outbox row in the same
   transaction, so two senders never report one change twice);
2. claims the statuses that are due (:func:`claim_due`: a lease on each row, so two senders
   never send one row at once), sends them, and settles each (:func:`settle`) as sent, as
   retried later (back-off), or as refused by the forge for good.

A status that has not gone out when a newer one of the same commit and context is written is
never sent (it is settled as superseded), so a forge that was down gets the run's latest state,
not the history in a wrong order. Statuses outside a run (a commit whose pipeline file is missing
or invalid) are written with :func:`enqueue_status`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from pipelines.store.models import CommitStatus, Job, Run, StatusWatch, UTCDateTime

FINAL_STATES = frozenset({"success", "failed", "canceled", "error"})
_WATCHES: Any = StatusWatch.__table__  # type: ignore[attr-defined]
_STATUSES: Any = CommitStatus.__table__  # type: ignore[attr-defined]
_RUNS: Any = Run.__table__  # type: ignore[attr-defined]
_JOBS: Any = Job.__table__  # type: ignore[attr-defined]
_KEY = (_STATUSES.c.repo_id, _STATUSES.c.sha, _STATUSES.c.context)


@dataclass(frozen=True, slots=True)
class StatusTarget:
    """Where a run's statuses go: the repository (its forge, API and token), the commit, the
    forge's name of the repository, the status's name, and the page it links to."""

    repo_id: str
    sha: str
    project: str
    context: str
    target_url: str


@dataclass(frozen=True, slots=True)
class WatchedRun:
    run_id: str
    target: StatusTarget
    reported: str
    status: str
    jobs: Mapping[str, int] = field(default_factory=dict)  # job status -> how many


@dataclass(frozen=True, slots=True)
class DueStatus:
    id: int
    repo_id: str
    sha: str
    project: str
    context: str
    state: str
    description: str
    target_url: str
    attempts: int


_INSERT_WATCH = sa.insert(_WATCHES).values(
    run_id=sa.bindparam("p_run"), repo_id=sa.bindparam("p_repo"), sha=sa.bindparam("p_sha"),
    project=sa.bindparam("p_project"), context=sa.bindparam("p_context"), target_url=sa.bindparam("p_url"),
    state=sa.bindparam("p_state"), final=sa.bindparam("p_final"))
_INSERT_STATUS = sa.insert(_STATUSES).values(
    repo_id=sa.bindparam("p_repo"), run_id=sa.bindparam("p_run"), sha=sa.bindparam("p_sha"),
    project=sa.bindparam("p_project"), context=sa.bindparam("p_context"), state=sa.bindparam("p_state"),
    description=sa.bindparam("p_description"), target_url=sa.bindparam("p_url"),
    created_at=sa.bindparam("p_now", type_=UTCDateTime()), attempts=0,
    next_attempt_at=sa.bindparam("p_now", type_=UTCDateTime()), outcome="")
_WATCHED = (
    sa.select(_WATCHES, _RUNS.c.status.label("run_status"))
    .join(_RUNS, _RUNS.c.id == _WATCHES.c.run_id)
    .where(_WATCHES.c.final.is_(sa.false()))
    .limit(sa.bindparam("p_limit"))
)
_JOB_COUNTS = (
    sa.select(_JOBS.c.run_id, _JOBS.c.status, sa.func.count())
    .where(_JOBS.c.run_id.in_(sa.bindparam("p_ids", expanding=True)))
    .group_by(_JOBS.c.run_id, _JOBS.c.status)
)
_ADVANCE_WATCH = sa.update(_WATCHES).where(
    _WATCHES.c.run_id == sa.bindparam("p_run"), _WATCHES.c.state == sa.bindparam("p_old")
).values(state=sa.bindparam("p_new"), final=sa.bindparam("p_final"))
_DUE = (
    sa.select(_STATUSES)
    .where(_STATUSES.c.sent_at.is_(None), _STATUSES.c.next_attempt_at <= sa.bindparam("p_now", type_=UTCDateTime()),
           sa.or_(_STATUSES.c.claimed_until.is_(None),
                  _STATUSES.c.claimed_until < sa.bindparam("p_now", type_=UTCDateTime())))
    .order_by(_STATUSES.c.id)
    .limit(sa.bindparam("p_limit"))
)
_NEWEST_UNSENT = sa.select(*_KEY, sa.func.max(_STATUSES.c.id).label("newest")).where(
    _STATUSES.c.sent_at.is_(None), _STATUSES.c.repo_id.in_(sa.bindparam("p_repos", expanding=True))
).group_by(*_KEY)
_CLAIM = sa.update(_STATUSES).where(
    _STATUSES.c.id == sa.bindparam("p_id"), _STATUSES.c.sent_at.is_(None),
    sa.or_(_STATUSES.c.claimed_until.is_(None), _STATUSES.c.claimed_until < sa.bindparam("p_now", type_=UTCDateTime())),
).values(claimed_until=sa.bindparam("p_until", type_=UTCDateTime()))
_SETTLE = sa.update(_STATUSES).where(_STATUSES.c.id == sa.bindparam("p_id")).values(
    sent_at=sa.bindparam("p_sent", type_=UTCDateTime()), attempts=sa.bindparam("p_attempts"),
    next_attempt_at=sa.bindparam("p_next", type_=UTCDateTime()), claimed_until=None,
    outcome=sa.bindparam("p_outcome"))
_OF_RUN = sa.select(_STATUSES).where(_STATUSES.c.run_id == sa.bindparam("p_run")).order_by(_STATUSES.c.id)
_OF_SHA = sa.select(_STATUSES).where(_STATUSES.c.sha == sa.bindparam("p_sha")).order_by(_STATUSES.c.id)


def _values(target: StatusTarget, run_id: str | None, state: str, description: str, now: dt.datetime) -> dict[str, Any]:
    return {"p_repo": target.repo_id, "p_run": run_id, "p_sha": target.sha, "p_project": target.project,
            "p_context": target.context, "p_state": state, "p_description": description[:255],
            "p_url": target.target_url, "p_now": now}


def watch_run(session: Session, run_id: str, target: StatusTarget, state: str, description: str,
              now: dt.datetime) -> None:
    """Report ``run_id``'s states on its commit from now on, starting with ``state`` (in the
    run's own transaction)."""
    connection = session.connection()
    connection.execute(_INSERT_WATCH, {**_values(target, run_id, state, description, now),
                                       "p_final": state in FINAL_STATES})
    connection.execute(_INSERT_STATUS, _values(target, run_id, state, description, now))


def enqueue_status(session: Session, target: StatusTarget, state: str, description: str, now: dt.datetime,
                   run_id: str | None = None) -> None:
    """One status to send (a commit with no run: its pipeline file is missing or invalid)."""
    session.connection().execute(_INSERT_STATUS, _values(target, run_id, state, description, now))


def watched_runs(session: Session, limit: int = 200) -> list[WatchedRun]:
    """The watched runs that have not reported their end, with their jobs counted by status."""
    connection = session.connection()
    rows = connection.execute(_WATCHED, {"p_limit": limit}).all()
    counts: dict[str, dict[str, int]] = {}
    if rows:
        for row in connection.execute(_JOB_COUNTS, {"p_ids": [r.run_id for r in rows]}):
            counts.setdefault(str(row[0]), {})[str(row[1])] = int(row[2])
    return [WatchedRun(r.run_id, StatusTarget(r.repo_id, r.sha, r.project, r.context, r.target_url), r.state,
                       r.run_status, counts.get(r.run_id, {})) for r in rows]


def report(session: Session, watched: WatchedRun, state: str, description: str, now: dt.datetime) -> bool:
    """Record that ``watched`` now reports ``state``: its status goes into the outbox. False (and
    nothing written) when another sender recorded a change of this run first."""
    connection = session.connection()
    moved = connection.execute(_ADVANCE_WATCH, {"p_run": watched.run_id, "p_old": watched.reported, "p_new": state,
                                                "p_final": state in FINAL_STATES})
    if moved.rowcount != 1:
        return False
    connection.execute(_INSERT_STATUS, _values(watched.target, watched.run_id, state, description, now))
    return True


def any_due(session: Session, now: dt.datetime) -> bool:
    """Whether a status is due (a read: the sender takes the write lock only when there is work)."""
    return session.connection().execute(_DUE, {"p_now": now, "p_limit": 1}).first() is not None


def claim_due(session: Session, now: dt.datetime, lease: dt.timedelta, limit: int = 50) -> list[DueStatus]:
    """The statuses to send now, each claimed until ``now + lease``; an older one of a commit and
    context with a newer one waiting is settled as superseded instead."""
    connection = session.connection()
    due = connection.execute(_DUE, {"p_now": now, "p_limit": limit}).all()
    if not due:
        return []
    newest = {(r.repo_id, r.sha, r.context): r.newest
              for r in connection.execute(_NEWEST_UNSENT, {"p_repos": sorted({r.repo_id for r in due})})}
    claimed = []
    for row in due:
        latest = newest.get((row.repo_id, row.sha, row.context), row.id)
        if latest > row.id:
            connection.execute(_SETTLE, {"p_id": row.id, "p_sent": now, "p_attempts": row.attempts, "p_next": None,
                                         "p_outcome": f"superseded by status {latest}"})
            continue
        if connection.execute(_CLAIM, {"p_id": row.id, "p_now": now, "p_until": now + lease}).rowcount == 1:
            claimed.append(DueStatus(row.id, row.repo_id, row.sha, row.project, row.context, row.state,
                                     row.description, row.target_url, row.attempts))
    return claimed


def settle(session: Session, status_id: int, attempts: int, outcome: str, *, sent_at: dt.datetime | None,
           retry_at: dt.datetime | None) -> None:
    """After a try: ``sent_at`` set when it is done with (delivered, or refused for good),
    else ``retry_at`` is when the next try is due."""
    session.connection().execute(_SETTLE, {"p_id": status_id, "p_sent": sent_at, "p_attempts": attempts,
                                           "p_next": retry_at, "p_outcome": outcome[:2000]})


def statuses_of_run(session: Session, run_id: str) -> list[CommitStatus]:
    return [CommitStatus(**row._mapping) for row in session.connection().execute(_OF_RUN, {"p_run": run_id})]


def statuses_of_commit(session: Session, sha: str) -> list[CommitStatus]:
    return [CommitStatus(**row._mapping) for row in session.connection().execute(_OF_SHA, {"p_sha": sha})]
