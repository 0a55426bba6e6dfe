"""Run submitter: ``run.submitter`` (who asked for the run) and an index to count its runs in flight.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

The policy caps the runs in flight per submitter (an API token, later a repository); the API
counts ``submitter = ? AND finished_at IS NULL`` on every submission, hence the index on both.
Runs from before this revision have no submitter and count for nobody.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("submitter", sa.String(length=255), nullable=True))
        batch_op.create_index("ix_run_submitter_finished_at", ["submitter", "finished_at"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.drop_index("ix_run_submitter_finished_at")
        batch_op.drop_column("submitter")
