"""A run's job variables: ``run.job_variables``, the variables every job of the run starts with.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

A job's stored spec used to carry every variable, the pipeline-wide predefined ``CI_*`` ones
included (≈ 1.3 KB of a job's ≈ 1.7 KB, the same for every job of the run); a run now stores them
once here and its jobs' specs only their own (see ``pipelines.store.spec.stored_spec_json``).
Runs from before this revision keep whole specs and get an empty list: nothing to put back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema (a plain ALTER TABLE ADD COLUMN: see revision 0004 on batch mode)."""
    op.add_column("run", sa.Column("job_variables", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    """Downgrade schema. The runs stored since hold their jobs' shared variables only here:
    write them back into every job's spec first, so the older code finds whole specs."""
    _restore_job_specs()
    op.drop_column("run", "job_variables")


_run = sa.table("run", sa.column("id", sa.String), sa.column("job_variables", sa.JSON))
_job = sa.table("job", sa.column("id", sa.String), sa.column("run_id", sa.String), sa.column("name", sa.String),
                sa.column("position", sa.Integer), sa.column("spec", sa.JSON), sa.column("needs", sa.JSON))


def _restore_job_specs() -> None:
    """The stored form as of this revision, undone (copied here, not imported from
    pipelines.store.spec, so this revision means the same thing however the code moves on)."""
    connection = op.get_bind()
    runs = connection.execute(sa.select(_run.c.id, _run.c.job_variables)).all()
    for run_id, shared in runs:
        jobs = connection.execute(
            sa.select(_job.c.id, _job.c.name, _job.c.spec).where(_job.c.run_id == run_id).order_by(_job.c.position)
        ).all()
        names = [job.name for job in jobs]
        updates = []
        for job in jobs:
            spec = dict(job.spec or {})
            count = spec.get("depends_on")
            if "shared_variables" not in spec and not isinstance(count, int):
                continue
            n = spec.pop("shared_variables", 0)
            pairs: list[Any] = list(shared or [])  # type: ignore[call-overload]  # a JSON list
            spec["variables"] = [list(pair) for pair in pairs[:n]] + list(spec.get("variables") or ())
            if isinstance(count, int):
                spec["depends_on"] = names[:count]
            updates.append({"b_id": job.id, "b_spec": spec, "b_needs": spec.get("depends_on") or []})
        if updates:
            connection.execute(
                _job.update().where(_job.c.id == sa.bindparam("b_id"))
                .values(spec=sa.bindparam("b_spec"), needs=sa.bindparam("b_needs")),
                updates,
            )
