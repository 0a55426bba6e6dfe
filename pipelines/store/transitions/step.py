"""One transition of a locked run: the run row, the jobs it changes, the frontier's push.

A transition that changes what a run does next first locks the run's row (``SELECT … FOR
UPDATE``; SQLite's ``BEGIN IMMEDIATE`` does the same), so two jobs finishing at once cannot both
miss a dependent that needed them both. The run and the changed jobs are snapshots changed in
memory, then written with a few prepared statements after the frontier pushed the changes to
the direct dependents: what a step reads and writes depends on the jobs that change and their
dependents, not on the size of the run.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from pipelines.store.advance import Standing
from pipelines.store.errors import JobNotFound, RunNotFound
from pipelines.store.frontier import Change, advance
from pipelines.store.models import Job, Run
from pipelines.store.outbox import mark_queued
from pipelines.store.progress import StoreGraph, counts_of, run_values, set_counts, write_decisions, write_outbox
from pipelines.store.statements import (
    INSERT_ARTIFACTS,
    INSERT_ATTEMPTS,
    JOB_MUTABLE,
    LOCK_RUN,
    LOCK_RUN_OF_JOB,
    READ_JOB,
    RUN_MUTABLE,
    UPDATE_JOB,
    UPDATE_RUN,
)


def standing(job: Job) -> Standing:
    """What the run's counters know of ``job``."""
    return Standing(job.status, job.allow_failure, job.reason)


def settle(job: Job, status: str, reason: str | None, now: dt.datetime) -> None:
    """Give ``job`` (a snapshot) a final status: it holds no lease any more."""
    job.status = status
    job.reason = reason
    job.finished_at = now
    job.lease_owner = None
    job.lease_expires_at = None
    job.deadline_at = None


def lock_run(session: Session, run_id: str) -> Run:
    """The run's row (without its pipeline text), locked until the transaction ends."""
    row = session.connection().execute(LOCK_RUN, {"p_run_id": run_id}).first()
    if row is None:
        raise RunNotFound(run_id)
    return Run(**row._mapping)


def write_run(connection: sa.Connection, run: Run) -> None:
    """Write what a transition changes of the run row (its status, end and counters)."""
    values = run_values(run)
    connection.execute(UPDATE_RUN, {"b_id": run.id, **{f"b_{k}": values[k] for k in RUN_MUTABLE}})


@dataclass
class Step:
    """One transition of a locked run (see the module docstring)."""

    connection: sa.Connection
    run: Run
    changes: list[Change] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def begin(cls, session: Session, job_id: str) -> Step:
        """Lock the run of ``job_id`` (one statement; SQLite's BEGIN IMMEDIATE holds the lock already)."""
        connection = session.connection()
        row = connection.execute(LOCK_RUN_OF_JOB, {"p_job_id": job_id}).first()
        if row is None:
            raise JobNotFound(job_id)
        return cls(connection, Run(**row._mapping))

    def load_job(self, job_id: str) -> Job:
        """The job as it is now (read after the run was locked; its spec in the stored form)."""
        row = self.connection.execute(READ_JOB, {"p_job_id": job_id}).first()
        if row is None:
            raise JobNotFound(job_id)
        return Job(**row._mapping)

    def queue(self, job: Job, now: dt.datetime) -> None:
        mark_queued(job, now)
        self.queued.append(job.id)

    def changed(self, job: Job, before: Standing) -> None:
        """``job`` (a snapshot) changed from ``before``: write it, count it, push it on."""
        self.jobs.append(job)
        self.changes.append(Change(job.id, job.stage_index, before, standing(job)))

    def finish(self, now: dt.datetime) -> list[str]:
        """Write the step; the ids the frontier queued (beyond those the step queued itself)."""
        connection = self.connection
        if self.jobs:
            connection.execute(
                UPDATE_JOB,
                [{"b_id": job.id, **{f"b_{name}": getattr(job, name) for name in JOB_MUTABLE}} for job in self.jobs],
            )
        for statement, rows in ((INSERT_ATTEMPTS, self.attempts), (INSERT_ARTIFACTS, self.artifacts)):
            if rows:
                connection.execute(statement, rows)
        counts = counts_of(self.run)
        decided = advance(counts, StoreGraph(connection, self.run.id), self.changes, run_cancelled=self.run.cancelled)
        newly = write_decisions(connection, decided, now)
        write_outbox(connection, [*self.queued, *newly], now)
        set_counts(self.run, counts, now)
        write_run(connection, self.run)
        return newly
