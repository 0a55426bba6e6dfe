"""Auto-cancelling runs a newer push or pull-request update made redundant (adapter).

GitLab's rule, as its default ``workflow:auto_cancel:on_new_commit: conservative`` states it
(docs.gitlab.com, "interruptible" and "Auto-cancel redundant pipelines"): when a pipeline is
created for a new commit of a branch (here also: of a merge request), each older pipeline of
that branch that has not finished is cancelled, *but only if no job with ``interruptible:
false`` has started yet*; jobs that have not started are considered safe to cancel whatever
their ``interruptible``. Once a non-interruptible job has started (a deployment, say), the old
pipeline is no longer auto-cancelable and runs to its end. A cancelled pipeline's waiting jobs
are cancelled and its running jobs (all interruptible, by the rule) are asked to stop.

:func:`superseded_runs` finds the older runs (same repository; a push to the same branch, or the
same merge request), :func:`cancel_if_interruptible` applies the rule to one of them; both run
in the transaction that stores the new run.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from pipelines.store.models import Job, RepositoryRun, Run
from pipelines.store.spec import spec_field
from pipelines.store.transitions import cancel_run

_RUNS: Any = Run.__table__  # type: ignore[attr-defined]
_JOBS: Any = Job.__table__  # type: ignore[attr-defined]
_LINKS: Any = RepositoryRun.__table__  # type: ignore[attr-defined]

_OLDER = (
    sa.select(_RUNS.c.id)
    .join(_LINKS, _LINKS.c.run_id == _RUNS.c.id)
    .where(_LINKS.c.repo_id == sa.bindparam("p_repo"), _RUNS.c.id != sa.bindparam("p_new"),
           _RUNS.c.finished_at.is_(None), _RUNS.c.created_at <= sa.bindparam("p_before"))
    .order_by(_RUNS.c.created_at)
)
_LOCK = sa.select(_RUNS.c.id, _RUNS.c.finished_at).where(_RUNS.c.id == sa.bindparam("p_run")).with_for_update()
_STARTED = sa.select(_JOBS.c.name, _JOBS.c.spec).where(
    _JOBS.c.run_id == sa.bindparam("p_run"), _JOBS.c.attempt > 0)


def superseded_runs(session: Session, repo_id: str, new_run_id: str, created_at: dt.datetime, *, kind: str,
                    ref: str, merge_request_iid: int | None) -> list[str]:
    """Unfinished runs of ``repo_id`` older than the new one for the same branch push
    (``kind`` ``push``) or the same merge request, oldest first."""
    if kind == "merge_request" and merge_request_iid is not None:
        where = sa.and_(_LINKS.c.kind == "merge_request", _LINKS.c.merge_request_iid == merge_request_iid)
    elif kind == "push":
        where = sa.and_(_LINKS.c.kind == "push", _LINKS.c.ref == ref)
    else:
        return []
    rows = session.connection().execute(_OLDER.where(where), {"p_repo": repo_id, "p_new": new_run_id,
                                                              "p_before": created_at})
    return list(rows.scalars())


def cancel_if_interruptible(session: Session, run_id: str, now: dt.datetime) -> str | None:
    """Cancel ``run_id`` unless a non-interruptible job of it has started; None when cancelled,
    else why not (the job that started, or that the run has ended)."""
    connection = session.connection()
    row = connection.execute(_LOCK, {"p_run": run_id}).first()
    if row is None or row.finished_at is not None:
        return "it has ended"
    for name, spec in connection.execute(_STARTED, {"p_run": run_id}):
        if not spec_field(spec if isinstance(spec, dict) else {}, "interruptible"):
            return f"job {name!r} (not interruptible) has started"
    cancel_run(session, run_id, now)
    return None
