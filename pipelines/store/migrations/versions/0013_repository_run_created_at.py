"""A repository's run list, one index range: ``repository_run.created_at``.

A run list filtered by repository (``GET /runs?repository=``, ``/repos/{id}/runs``, the UI) found
its runs through ``repository_run``, which had no creation time: SQLite walked ``run.created_at``
testing each run's link (about a page divided by the repository's share of the runs), PostgreSQL
read every run of the repository and sorted them. The link now carries its run's ``created_at``
(copied when the link is made, in the run's transaction; filled here for the links stored), and
``ix_repository_run_repo_created_at`` (repository, created_at, run) gives the page newest first.
``ix_repository_run_repo_id`` goes: it is the first column of the new index.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column("repository_run", sa.Column("created_at", sa.DateTime(), nullable=True))
    links = sa.table("repository_run", sa.column("run_id"), sa.column("created_at"))
    runs = sa.table("run", sa.column("id"), sa.column("created_at"))
    op.execute(links.update().values(
        created_at=sa.select(runs.c.created_at).where(runs.c.id == links.c.run_id).scalar_subquery()))
    op.create_index("ix_repository_run_repo_created_at", "repository_run", ["repo_id", "created_at", "run_id"],
                    unique=False)
    op.drop_index("ix_repository_run_repo_id", table_name="repository_run")


def downgrade() -> None:
    """Downgrade schema."""
    op.create_index("ix_repository_run_repo_id", "repository_run", ["repo_id"], unique=False)
    op.drop_index("ix_repository_run_repo_created_at", table_name="repository_run")
    with op.batch_alter_table("repository_run", schema=None) as batch_op:
        batch_op.drop_column("created_at")
