"""Workers and per-job tokens: ``worker`` (what each worker announced, its heartbeat) and
``job_token`` (the sha256 of each running attempt's token, for a worker that shares no disk with
the API).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04

Two new tables and their indexes; nothing existing changes, so the downgrade only drops them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "worker",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("cpus", sa.Float(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("runtimes", sa.JSON(), nullable=False),
        sa.Column("images", sa.JSON(), nullable=False),
        sa.Column("transport", sa.String(length=16), nullable=False),
        sa.Column("heartbeat_s", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_worker_last_seen_at", "worker", ["last_seen_at"], unique=False)
    op.create_table(
        "job_token",
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token_sha256"),
    )
    op.create_index("ix_job_token_job_id", "job_token", ["job_id"], unique=False)
    op.create_index("ix_job_token_worker_id", "job_token", ["worker_id"], unique=False)


def downgrade() -> None:
    """Downgrade schema (what workers announced and their tokens are dropped)."""
    op.drop_index("ix_job_token_worker_id", table_name="job_token")
    op.drop_index("ix_job_token_job_id", table_name="job_token")
    op.drop_table("job_token")
    op.drop_index("ix_worker_last_seen_at", table_name="worker")
    op.drop_table("worker")
