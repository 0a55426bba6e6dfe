"""Incremental advance: run counters, per-job wait counts, the ``job_edge`` table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

A transition used to read every job of its run; now it updates the run's counters
(``run.jobs_*``, ``run.stage_pending``/``stage_failed``) and the wait counts of the changed
job's direct dependents (``job.waiting_on``/``failed_on`` through ``job_edge``): see
``pipelines.store.frontier``. The data migration fills them for the runs already stored:
the counters of every run with one aggregate ``UPDATE`` each, and for the runs still in
flight (no ``finished_at``) the stage indexes, edges and wait counts from their jobs'
``needs`` (those jobs all keep explicit edges: ``follows_stages`` stays false, which the
frontier treats exactly as before). The outcome rule is copied here, not imported, so this
revision means the same thing however the code moves on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COUNTERS = ("jobs_total", "jobs_created", "jobs_active", "jobs_blocking", "jobs_failed", "jobs_cancelled")


def upgrade() -> None:
    """Upgrade schema."""
    # Plain ALTER TABLE ADD COLUMN, never batch mode's copy of the table: on SQLite a copy drops
    # the old table, and with foreign keys on that DELETEs every row that references it (a run's
    # jobs, a job's attempts and artifacts). String defaults (not sa.text) keep Alembic on ALTER.
    for name in _COUNTERS:
        op.add_column("run", sa.Column(name, sa.Integer(), nullable=False, server_default="0"))
    op.add_column("run", sa.Column("stage_pending", sa.JSON(), nullable=False, server_default="[]"))
    op.add_column("run", sa.Column("stage_failed", sa.JSON(), nullable=False, server_default="[]"))
    op.add_column("job", sa.Column("stage_index", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("job", sa.Column("follows_stages", sa.Boolean(), nullable=False, server_default="0"))
    op.add_column("job", sa.Column("waiting_on", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("job", sa.Column("failed_on", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix_job_run_stage", "job", ["run_id", "stage_index"], unique=False)
    op.create_table(
        "job_edge",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("dependent_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["dependent_id"], ["job.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "dependent_id"),
    )
    op.create_index("ix_job_edge_dependent_id", "job_edge", ["dependent_id"], unique=False)
    _fill_counters()
    _fill_runs_in_flight()


def downgrade() -> None:
    """Downgrade schema (ALTER TABLE DROP COLUMN, SQLite 3.35+; no copy of a table, see upgrade)."""
    op.drop_index("ix_job_edge_dependent_id", table_name="job_edge")
    op.drop_table("job_edge")
    op.drop_index("ix_job_run_stage", table_name="job")
    for name in ("failed_on", "waiting_on", "follows_stages", "stage_index"):
        op.drop_column("job", name)
    for name in ("stage_failed", "stage_pending", *reversed(_COUNTERS)):
        op.drop_column("run", name)


_run = sa.table(
    "run", sa.column("id", sa.String), sa.column("finished_at", sa.DateTime), sa.column("stages", sa.JSON),
    sa.column("stage_pending", sa.JSON), sa.column("stage_failed", sa.JSON),
    *(sa.column(name, sa.Integer) for name in _COUNTERS),
)
_job = sa.table(
    "job", sa.column("id", sa.String), sa.column("run_id", sa.String), sa.column("name", sa.String),
    sa.column("stage", sa.String), sa.column("status", sa.String), sa.column("reason", sa.String),
    sa.column("allow_failure", sa.Boolean), sa.column("needs", sa.JSON), sa.column("stage_index", sa.Integer),
    sa.column("waiting_on", sa.Integer), sa.column("failed_on", sa.Integer),
)
_edge = sa.table("job_edge", sa.column("job_id", sa.String), sa.column("dependent_id", sa.String))


def _fill_counters() -> None:
    allowed = _job.c.allow_failure.is_(sa.true())
    conditions: dict[str, Any] = {
        "jobs_total": sa.true(),
        "jobs_created": _job.c.status == "created",
        "jobs_active": _job.c.status.in_(("queued", "running")),
        "jobs_blocking": sa.and_(_job.c.status == "manual", sa.not_(allowed)),
        "jobs_failed": sa.and_(_job.c.status.in_(("failed", "error")), sa.not_(allowed)),
        "jobs_cancelled": sa.and_(_job.c.status == "cancelled", sa.not_(allowed)),
    }
    values = {
        name: sa.select(sa.func.count()).where(_job.c.run_id == _run.c.id, condition).scalar_subquery()
        for name, condition in conditions.items()
    }
    op.execute(_run.update().values(values))


def _outcome(status: str, allowed: bool, reason: str | None) -> str:
    """pipelines.store.advance.outcome as of this revision."""
    if status in ("created", "queued", "running"):
        return "pending"
    if status == "manual":
        return "ok" if allowed else "pending"
    if status in ("failed", "error", "cancelled"):
        return "ok" if allowed else "failed"
    if status == "skipped":
        return "failed" if reason == "dependency_failed" else "ok"
    return "ok"


def _fill_runs_in_flight() -> None:
    connection = op.get_bind()
    runs = connection.execute(sa.select(_run.c.id, _run.c.stages).where(_run.c.finished_at.is_(None))).all()
    for run_id, stages in runs:  # stages: a JSON list of names
        jobs = connection.execute(
            sa.select(_job.c.id, _job.c.name, _job.c.stage, _job.c.status, _job.c.reason, _job.c.allow_failure,
                      _job.c.needs).where(_job.c.run_id == run_id)
        ).all()
        names: list[str] = list(stages or ())  # type: ignore[call-overload]
        stage_of = {name: i for i, name in enumerate(names)}
        for job in jobs:
            stage_of.setdefault(job.stage, len(stage_of))
        ids = {job.name: job.id for job in jobs}
        outcomes = {job.name: _outcome(job.status, bool(job.allow_failure), job.reason) for job in jobs}
        pending = [0] * len(stage_of)
        failed = [0] * len(stage_of)
        edges: list[dict[str, str]] = []
        updates: list[dict[str, Any]] = []
        for job in jobs:
            stage = stage_of[job.stage]
            kind = outcomes[job.name]
            if kind != "ok":
                (pending if kind == "pending" else failed)[stage] += 1
            needs = [name for name in dict.fromkeys(job.needs or ()) if name in ids]
            edges += [{"job_id": ids[name], "dependent_id": job.id} for name in needs]
            updates.append({
                "b_id": job.id,
                "b_stage_index": stage,
                "b_waiting_on": sum(outcomes[name] == "pending" for name in needs),
                "b_failed_on": sum(outcomes[name] == "failed" for name in needs),
            })
        if updates:
            connection.execute(
                _job.update().where(_job.c.id == sa.bindparam("b_id")).values(
                    stage_index=sa.bindparam("b_stage_index"), waiting_on=sa.bindparam("b_waiting_on"),
                    failed_on=sa.bindparam("b_failed_on"),
                ),
                updates,
            )
        if edges:
            connection.execute(_edge.insert(), edges)
        connection.execute(_run.update().where(_run.c.id == run_id).values(stage_pending=pending, stage_failed=failed))
