"""Auto-cancelling runs a newer push or pull-request update made redundant (adapter).

GitLab's rule (docs.gitlab.com, ``workflow:auto_cancel:on_new_commit`` and "Auto-cancel redundant
pipelines"): when a pipeline is created for a new commit of a branch (here also: of a merge
request), each older pipeline of that branch that has not finished is judged by **its own**
``on_new_commit`` — GitLab's ``CancelRedundantPipelinesService`` reads the setting of the
pipeline it may cancel, kept in that pipeline's metadata, not the new pipeline's:

- ``conservative`` (the default): the older run is cancelled *only if no job with*
  ``interruptible: false`` *has started yet*; jobs that have not started are safe to cancel
  whatever their ``interruptible``. Once a non-interruptible job has started (a deployment, say),
  the run goes to its end. A cancelled run's waiting jobs are cancelled and its running jobs (all
  interruptible, by the rule) are asked to stop.
- ``interruptible``: only the older run's ``interruptible: true`` jobs are cancelled, running or
  waiting, even when non-interruptible ones have started; those run on (GitLab's "safe
  cancellation" of ``pipeline.all_processable_jobs.cancelable.interruptible``). Their dependents
  are decided as after any cancelled job (skipped unless ``when: always``/``on_failure``).
- ``none``: never.

An older run of the same commit is not superseded (GitLab skips a pipeline whose sha is the new
one's). :func:`superseded_runs` finds the older runs (same repository; a push to the same branch,
or the same merge request), :func:`cancel_if_interruptible` applies the older run's rule to it;
both run in the transaction that stores the new run.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from pipelines.store.auto_cancel import auto_cancel_of
from pipelines.store.models import Job, RepositoryRun, Run
from pipelines.store.spec import spec_field
from pipelines.store.transitions import cancel_job, cancel_run

_RUNS: Any = Run.__table__  # type: ignore[attr-defined]
_JOBS: Any = Job.__table__  # type: ignore[attr-defined]
_LINKS: Any = RepositoryRun.__table__  # type: ignore[attr-defined]

_NEW_SHA = sa.select(_RUNS.c.sha).where(_RUNS.c.id == sa.bindparam("p_new")).scalar_subquery()
_OLDER = (
    sa.select(_RUNS.c.id)
    .join(_LINKS, _LINKS.c.run_id == _RUNS.c.id)
    .where(_LINKS.c.repo_id == sa.bindparam("p_repo"), _RUNS.c.id != sa.bindparam("p_new"),
           _RUNS.c.finished_at.is_(None), _RUNS.c.created_at <= sa.bindparam("p_before"),
           sa.or_(_RUNS.c.sha == "", _RUNS.c.sha != sa.func.coalesce(_NEW_SHA, "")))
    .order_by(_RUNS.c.created_at)
)
_LOCK = sa.select(_RUNS.c.id, _RUNS.c.finished_at).where(_RUNS.c.id == sa.bindparam("p_run")).with_for_update()
_STARTED = sa.select(_JOBS.c.name, _JOBS.c.spec).where(
    _JOBS.c.run_id == sa.bindparam("p_run"), _JOBS.c.attempt > 0)
_UNFINISHED = sa.select(_JOBS.c.id, _JOBS.c.spec).where(
    _JOBS.c.run_id == sa.bindparam("p_run"), _JOBS.c.status.in_(("created", "queued", "running"))
).order_by(_JOBS.c.position)


def superseded_runs(session: Session, repo_id: str, new_run_id: str, created_at: dt.datetime, *, kind: str,
                    ref: str, merge_request_iid: int | None) -> list[str]:
    """Unfinished runs of ``repo_id`` older than the new one for the same branch push
    (``kind`` ``push``) or the same merge request, of another commit, oldest first."""
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
    """Apply ``run_id``'s own ``on_new_commit`` to it (see the module docstring): None when it was
    cancelled (``conservative``) or its interruptible jobs were (``interruptible``), else why not."""
    connection = session.connection()
    row = connection.execute(_LOCK, {"p_run": run_id}).first()
    if row is None or row.finished_at is not None:
        return "it has ended"
    mode = auto_cancel_of(session, run_id).on_new_commit
    if mode == "none":
        return "its workflow:auto_cancel:on_new_commit is none"
    if mode == "interruptible":
        return _cancel_interruptible_jobs(session, run_id, now)
    for name, spec in connection.execute(_STARTED, {"p_run": run_id}):
        if not _interruptible(spec):
            return f"job {name!r} (not interruptible) has started"
    cancel_run(session, run_id, now)
    return None


def _cancel_interruptible_jobs(session: Session, run_id: str, now: dt.datetime) -> str | None:
    """``on_new_commit: interruptible``: cancel each unfinished interruptible job, in plan order
    (a waiting one at once, a running one asked to stop; manual jobs are not GitLab's cancelable
    ones and stay); the jobs this makes ready stay in the outbox for the sweeper to publish."""
    unfinished = session.connection().execute(_UNFINISHED, {"p_run": run_id}).all()
    chosen = [str(job_id) for job_id, spec in unfinished if _interruptible(spec)]
    if not chosen:
        return "none of its unfinished jobs is interruptible"
    for job_id in chosen:
        cancel_job(session, job_id, now)
    return None


def _interruptible(spec: object) -> bool:
    return bool(spec_field(spec if isinstance(spec, dict) else {}, "interruptible"))
