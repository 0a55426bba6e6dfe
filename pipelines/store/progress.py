"""A run's progress in the database: its counters, its jobs' edges, the frontier's writes (adapter).

What :mod:`pipelines.store.frontier` decides is read and written here with prepared Core
statements, each touching the changed job's direct dependents or one stage's waiting jobs,
never the whole run (except :func:`recount`, which cancelling a run and the checks use):

- :class:`StoreGraph` is the frontier's :class:`~pipelines.store.frontier.Graph` over rows: a
  predecessor's change is one ``UPDATE … RETURNING`` of its waiting dependents' counts;
- :func:`write_decisions` writes what the waiting jobs became, one statement per batch;
- :func:`counts_of` / :func:`count_values`: the run row's counters as
  :class:`~pipelines.store.advance.RunCounts` and back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from pipelines.store.advance import RunCounts, Standing
from pipelines.store.frontier import Settled, Waiting
from pipelines.store.models import Run
from pipelines.store.statements import COUNT_COLUMNS, COUNTS, DECIDE, FOLLOWERS, INSERT_OUTBOX, PUSH


def _waiting(row: Any) -> Waiting:
    return Waiting(row.id, row.position, row.stage_index, row.when, bool(row.allow_failure),
                   bool(row.follows_stages), row.waiting_on, row.failed_on)


class StoreGraph:
    """The frontier's graph over the job rows of one (locked) run."""

    def __init__(self, connection: sa.Connection, run_id: str) -> None:
        self._connection = connection
        self._run_id = run_id

    def dependents(self, job_id: str, pending: int, failed: int) -> list[Waiting]:
        rows = self._connection.execute(PUSH, {"p_job_id": job_id, "p_pending": pending, "p_failed": failed})
        return [_waiting(row) for row in rows if row.status == "created"]

    def followers(self, stage: int) -> list[Waiting]:
        rows = self._connection.execute(FOLLOWERS, {"p_run_id": self._run_id, "p_stage": stage})
        return [_waiting(row) for row in rows]


def write_decisions(connection: sa.Connection, decisions: Sequence[Settled], now: dt.datetime) -> list[str]:
    """Write what waiting jobs became (a queued one gets ``queued_at``, a settled one
    ``finished_at``); returns the ids queued, in plan order (the caller writes their outbox rows)."""
    if not decisions:
        return []
    connection.execute(
        DECIDE,
        [
            {
                "b_id": d.job.id,
                "b_status": d.status,
                "b_reason": d.reason,
                "b_queued_at": now if d.status == "queued" else None,
                "b_finished_at": now if d.status in ("skipped", "cancelled") else None,
            }
            for d in decisions
        ],
    )
    return [d.job.id for d in decisions if d.status == "queued"]


def write_outbox(connection: sa.Connection, job_ids: Iterable[str], now: dt.datetime, *, sent: bool = False) -> None:
    """One outbox row per job id (``sent``: written as published, see :mod:`pipelines.store.outbox`)."""
    INSERT_OUTBOX.execute(
        connection, [{"job_id": job_id, "created_at": now, "published_at": now if sent else None} for job_id in job_ids]
    )


def counts_of(run: Run) -> RunCounts:
    """The run row's counters."""
    total, created, active, blocking, failed, cancelled = (int(getattr(run, name)) for name in COUNT_COLUMNS)
    return RunCounts(total, created, active, blocking, failed, cancelled,
                     stage_pending=list(run.stage_pending or ()), stage_failed=list(run.stage_failed or ()))


def count_values(counts: RunCounts) -> dict[str, Any]:
    """The run row's counter columns for ``counts``."""
    values: dict[str, Any] = {name: getattr(counts, name.removeprefix("jobs_")) for name in COUNT_COLUMNS}
    values["stage_pending"] = list(counts.stage_pending)
    values["stage_failed"] = list(counts.stage_failed)
    return values


def set_counts(run: Run, counts: RunCounts, now: dt.datetime) -> None:
    """Put ``counts`` on ``run`` with the status and end time they give."""
    for name, value in count_values(counts).items():
        setattr(run, name, value)
    run.status = counts.status(run_cancelled=run.cancelled)
    run.finished_at = (run.finished_at or now) if counts.settled else None


def recount(connection: sa.Connection, run_id: str, stages: int) -> RunCounts:
    """The run's counters from its jobs (one aggregate over the run's rows)."""
    counts = RunCounts(stage_pending=[0] * stages, stage_failed=[0] * stages)
    for row in connection.execute(COUNTS, {"p_run_id": run_id}):
        counts.add(int(row[0]), Standing(str(row[1]), bool(row[2]), row[3]), int(row[4]))
    return counts


def run_values(run: Run) -> Mapping[str, Any]:
    """What a transition writes back to the run row."""
    return {"status": run.status, "finished_at": run.finished_at, "cancelled": run.cancelled,
            **{name: getattr(run, name) for name in (*COUNT_COLUMNS, "stage_pending", "stage_failed")}}
