"""The statements a person's control of one finished job needs: a retry (adapter's vocabulary; no I/O).

Kept beside :mod:`pipelines.store.statements` rather than in it, as
:mod:`pipelines.store.approvals` keeps its own: prepared Core statements with bind parameters,
built once at import, executed on the caller's connection by
:mod:`pipelines.store.transitions.retry`.

- the skipped jobs a retried job (or a job reset with it) let skip: its dependents by ``needs``
  edges, and the jobs of the later stages that follow stage order;
- the attempt it retries, marked ``retried`` in the history (as an automatic retry marks it);
- the artifacts that attempt kept, expired now, so the sweeper removes them as any expired
  artifact (the job's artifacts are then its new attempt's);
- the run's commit-status watch, reopened, so its forge hears that the run runs again.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from pipelines.store.models import StatusWatch, UTCDateTime
from pipelines.store.statements import ARTIFACTS, ATTEMPTS, EDGES, JOBS

WATCHES: Any = StatusWatch.__table__  # type: ignore[attr-defined]

SKIPPED_EDGE_DEPENDENTS = sa.select(JOBS).where(
    JOBS.c.id.in_(sa.select(EDGES.c.dependent_id).where(EDGES.c.job_id.in_(sa.bindparam("p_ids", expanding=True)))),
    JOBS.c.status == "skipped",
)
SKIPPED_STAGE_FOLLOWERS = sa.select(JOBS).where(
    JOBS.c.run_id == sa.bindparam("p_run_id"),
    JOBS.c.follows_stages.is_(sa.true()),
    JOBS.c.stage_index > sa.bindparam("p_stage"),
    JOBS.c.status == "skipped",
)
MARK_ATTEMPT_RETRIED = sa.update(ATTEMPTS).where(
    ATTEMPTS.c.job_id == sa.bindparam("p_job_id"), ATTEMPTS.c.attempt == sa.bindparam("p_attempt"),
).values(retried=True)
EXPIRE_JOB_ARTIFACTS = sa.update(ARTIFACTS).where(
    ARTIFACTS.c.job_id == sa.bindparam("p_job_id"),
    sa.or_(ARTIFACTS.c.expires_at.is_(None), ARTIFACTS.c.expires_at > sa.bindparam("p_now", type_=UTCDateTime())),
).values(expires_at=sa.bindparam("p_now", type_=UTCDateTime()))
REOPEN_STATUS_WATCH = sa.update(WATCHES).where(WATCHES.c.run_id == sa.bindparam("p_run_id")).values(final=False)
