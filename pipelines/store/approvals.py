"""Runs held for an admin's approval: a fork's pull request under ``fork_policy: approve`` (adapter).

A held run is stored like any other (its jobs, its first advance), then, in the same
transaction, :func:`hold_run` takes back what that advance started: the jobs it queued and
the manual jobs it offered go back to ``created`` (their outbox rows go), so no worker runs
anything and nobody can play a manual job, and the run's status is ``waiting_for_approval``.
Nothing moves in a run whose jobs are all waiting, so the status stays until
:func:`approve_run` gives the jobs back — queued with fresh outbox rows, the caller publishes
them after the commit as every queued job is — or the run is cancelled (a closed pull request,
a newer push, an admin), which settles its jobs as for any run.

::

    StoreError (pipelines.store.errors)
    └── NotWaiting      the run is not waiting for approval (approved already, or never held)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from pipelines.store.errors import RunFinished, RunNotFound, StoreError
from pipelines.store.models import Job, Outbox, Repository, RepositoryRun, Run, RunApproval, UTCDateTime
from pipelines.store.progress import recount, run_values, set_counts, write_outbox

WAITING_FOR_APPROVAL = "waiting_for_approval"

_RUNS: Any = Run.__table__  # type: ignore[attr-defined]
_JOBS: Any = Job.__table__  # type: ignore[attr-defined]
_OUTBOX: Any = Outbox.__table__  # type: ignore[attr-defined]
_APPROVALS: Any = RunApproval.__table__  # type: ignore[attr-defined]
_LINKS: Any = RepositoryRun.__table__  # type: ignore[attr-defined]
_REPOS: Any = Repository.__table__  # type: ignore[attr-defined]
_WRITTEN = ("status", "finished_at", "cancelled", "jobs_total", "jobs_created", "jobs_active", "jobs_blocking",
            "jobs_failed", "jobs_cancelled", "stage_pending", "stage_failed")

_LOCK_RUN = sa.select(_RUNS).where(_RUNS.c.id == sa.bindparam("p_run")).with_for_update()
_OFFERED = sa.select(_JOBS.c.id, _JOBS.c.status).where(
    _JOBS.c.run_id == sa.bindparam("p_run"), _JOBS.c.status.in_(("queued", "manual"))).order_by(_JOBS.c.position)
_TAKE_BACK = sa.update(_JOBS).where(
    _JOBS.c.run_id == sa.bindparam("p_run"), _JOBS.c.status.in_(("queued", "manual"))
).values(status="created", queued_at=None)
_DROP_OUTBOX = sa.delete(_OUTBOX).where(_OUTBOX.c.job_id.in_(sa.bindparam("p_ids", expanding=True)))
_WRITE_RUN = sa.update(_RUNS).where(_RUNS.c.id == sa.bindparam("b_id")).values(
    {name: sa.bindparam(f"b_{name}", type_=_RUNS.c[name].type) for name in _WRITTEN})
_INSERT_APPROVAL = sa.insert(_APPROVALS).values(
    run_id=sa.bindparam("p_run"), state="waiting", held_queued=sa.bindparam("p_queued", type_=sa.JSON()),
    held_manual=sa.bindparam("p_manual", type_=sa.JSON()), requested_at=sa.bindparam("p_now", type_=UTCDateTime()))
_READ_APPROVAL = sa.select(_APPROVALS.c.state, _APPROVALS.c.held_queued, _APPROVALS.c.held_manual).where(
    _APPROVALS.c.run_id == sa.bindparam("p_run"))
_GIVE_BACK = sa.update(_JOBS).where(
    _JOBS.c.id.in_(sa.bindparam("p_ids", expanding=True)), _JOBS.c.status == "created"
).values(status=sa.bindparam("p_status"), queued_at=sa.bindparam("p_now", type_=UTCDateTime()))
_STILL_CREATED = sa.select(_JOBS.c.id).where(_JOBS.c.id.in_(sa.bindparam("p_ids", expanding=True)),
                                            _JOBS.c.status == "created")
_DECIDE = sa.update(_APPROVALS).where(_APPROVALS.c.run_id == sa.bindparam("p_run")).values(
    state=sa.bindparam("p_state"), decided_at=sa.bindparam("p_now", type_=UTCDateTime()),
    decided_by=sa.bindparam("p_who"))
_WAITING = (
    sa.select(_APPROVALS.c.run_id, _APPROVALS.c.requested_at, _RUNS.c.ref, _RUNS.c.sha,
              sa.func.substr(_RUNS.c.message, 1, 300).label("message"), _REPOS.c.name.label("repository"),
              _LINKS.c.merge_request_iid)
    .join(_RUNS, _RUNS.c.id == _APPROVALS.c.run_id)
    .outerjoin(_LINKS, _LINKS.c.run_id == _APPROVALS.c.run_id)
    .outerjoin(_REPOS, _REPOS.c.id == _LINKS.c.repo_id)
    .where(_APPROVALS.c.state == "waiting", _RUNS.c.cancelled.is_(sa.false()), _RUNS.c.finished_at.is_(None))
    .order_by(_APPROVALS.c.requested_at.desc())
    .limit(sa.bindparam("p_limit"))
)


class NotWaiting(StoreError):
    def __init__(self, run_id: str, state: str | None) -> None:
        shown = f"its approval is {state}" if state else "it was never held for approval"
        super().__init__(f"run {run_id} is not waiting for approval ({shown})")
        self.run_id, self.state = run_id, state


@dataclass(frozen=True, slots=True)
class WaitingRun:
    run_id: str
    repository: str | None
    ref: str
    sha: str
    title: str
    merge_request_iid: int | None
    requested_at: dt.datetime


def _lock(session: Session, run_id: str) -> Run:
    row = session.connection().execute(_LOCK_RUN, {"p_run": run_id}).first()
    if row is None:
        raise RunNotFound(run_id)
    return Run(**row._mapping)


def _write(connection: sa.Connection, run: Run) -> None:
    values = run_values(run)
    connection.execute(_WRITE_RUN, {"b_id": run.id, **{f"b_{name}": values[name] for name in _WRITTEN}})


def hold_run(session: Session, run_id: str, now: dt.datetime) -> tuple[str, ...]:
    """Hold a run just stored (same transaction): nothing of it starts until :func:`approve_run`.
    Returns the ids its first advance had queued (the caller must not publish them)."""
    run = _lock(session, run_id)
    connection = session.connection()
    offered = connection.execute(_OFFERED, {"p_run": run_id}).all()
    if not offered:
        return ()  # its first advance started nothing (every job skipped): nothing to hold
    queued = [row.id for row in offered if row.status == "queued"]
    manual = [row.id for row in offered if row.status == "manual"]
    connection.execute(_TAKE_BACK, {"p_run": run_id})
    if queued:
        connection.execute(_DROP_OUTBOX, {"p_ids": queued})
    set_counts(run, recount(connection, run_id, len(run.stages)), now)
    run.status = WAITING_FOR_APPROVAL
    run.finished_at = None
    _write(connection, run)
    connection.execute(_INSERT_APPROVAL, {"p_run": run_id, "p_queued": queued, "p_manual": manual, "p_now": now})
    return tuple(queued)


def approve_run(session: Session, run_id: str, approved_by: str, now: dt.datetime) -> list[str]:
    """Give a held run its jobs back: the ids now queued, with outbox rows (publish them after the
    commit). :class:`NotWaiting` if it is not held, ``RunFinished`` if it was cancelled meanwhile."""
    run = _lock(session, run_id)
    connection = session.connection()
    row = connection.execute(_READ_APPROVAL, {"p_run": run_id}).first()
    if row is None or row.state != "waiting":
        raise NotWaiting(run_id, None if row is None else row.state)
    if run.cancelled or run.finished_at is not None:
        connection.execute(_DECIDE, {"p_run": run_id, "p_state": "cancelled", "p_now": now, "p_who": approved_by})
        raise RunFinished(run_id, run.status)
    queued = _give_back(connection, list(row.held_queued or ()), "queued", now)
    _give_back(connection, list(row.held_manual or ()), "manual", None)
    write_outbox(connection, queued, now)
    set_counts(run, recount(connection, run_id, len(run.stages)), now)
    _write(connection, run)
    connection.execute(_DECIDE, {"p_run": run_id, "p_state": "approved", "p_now": now, "p_who": approved_by})
    return queued


def _give_back(connection: sa.Connection, ids: Sequence[str], status: str, now: dt.datetime | None) -> list[str]:
    if not ids:
        return []
    still: set[str] = set(connection.execute(_STILL_CREATED, {"p_ids": list(ids)}).scalars())
    connection.execute(_GIVE_BACK, {"p_ids": list(ids), "p_status": status, "p_now": now})
    return [job_id for job_id in ids if job_id in still]


def approval_state(session: Session, run_id: str) -> str | None:
    """``waiting``, ``approved``, ``cancelled``, or None for a run that was never held."""
    row = session.connection().execute(_READ_APPROVAL, {"p_run": run_id}).first()
    return None if row is None else str(row.state)


def waiting_runs(session: Session, limit: int = 50) -> list[WaitingRun]:
    """The runs waiting for approval now, newest first (not cancelled, not ended)."""
    rows = session.connection().execute(_WAITING, {"p_limit": max(1, min(limit, 500))}).all()
    return [WaitingRun(r.run_id, r.repository, r.ref, r.sha, (r.message or "").strip().split("\n")[0],
                       r.merge_request_iid, r.requested_at) for r in rows]
