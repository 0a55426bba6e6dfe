"""Run secrets: ``run.secrets`` (JSON, default ``{}``), injected and masked by the worker.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

The server default fills the column for runs created before this revision; the API never
returns it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("run", schema=None) as batch_op:
        # a string default keeps Alembic on ALTER TABLE ADD COLUMN: an expression made it copy the
        # table, and dropping the old `run` with foreign keys on deleted every job (see 0004)
        batch_op.add_column(sa.Column("secrets", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.drop_column("secrets")
