"""Forge runs: where a run's files come from, runs held for approval, commit statuses.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

New tables (``run_source``, ``source_archive``, ``run_approval``, ``status_watch``,
``commit_status``), a nullable ``repository.api_url``, and ``run.status`` widened to 32
characters on PostgreSQL (``waiting_for_approval``). SQLite enforces no VARCHAR length, so its
column stays as declared: changing it would need batch mode's copy of ``run``, which with
foreign keys on deletes every job of every run (see revision 0004).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column("repository", sa.Column("api_url", sa.Text(), nullable=True))
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("run", "status", type_=sa.String(length=32), existing_type=sa.String(length=16),
                        existing_nullable=False)
    op.create_table(
        "run_source",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("repo_id", sa.String(length=36), nullable=True),
        sa.Column("clone_url", sa.Text(), nullable=False),
        sa.Column("sha", sa.String(length=64), nullable=False),
        sa.Column("archive_sha256", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["repo_id"], ["repository.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_index("ix_run_source_repo_id", "run_source", ["repo_id"], unique=False)
    op.create_table(
        "source_archive",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    op.create_table(
        "run_approval",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("held_queued", sa.JSON(), nullable=False),
        sa.Column("held_manual", sa.JSON(), nullable=False),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("decided_by", sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_index("ix_run_approval_state", "run_approval", ["state"], unique=False)
    op.create_table(
        "status_watch",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("repo_id", sa.String(length=36), nullable=False),
        sa.Column("sha", sa.String(length=64), nullable=False),
        sa.Column("project", sa.String(length=255), nullable=False),
        sa.Column("context", sa.String(length=255), nullable=False),
        sa.Column("target_url", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["repo_id"], ["repository.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_index("ix_status_watch_final", "status_watch", ["final"], unique=False)
    op.create_index("ix_status_watch_repo_id", "status_watch", ["repo_id"], unique=False)
    op.create_table(
        "commit_status",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("repo_id", sa.String(length=36), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=True),
        sa.Column("sha", sa.String(length=64), nullable=False),
        sa.Column("project", sa.String(length=255), nullable=False),
        sa.Column("context", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("target_url", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["repo_id"], ["repository.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_commit_status_due", "commit_status", ["sent_at", "next_attempt_at"], unique=False)
    op.create_index("ix_commit_status_repo_id", "commit_status", ["repo_id"], unique=False)


def downgrade() -> None:
    """Downgrade schema (forge run data is lost; a run stored as waiting_for_approval keeps
    that status, which older code shows as it is)."""
    op.drop_index("ix_commit_status_repo_id", table_name="commit_status")
    op.drop_index("ix_commit_status_due", table_name="commit_status")
    op.drop_table("commit_status")
    op.drop_index("ix_status_watch_repo_id", table_name="status_watch")
    op.drop_index("ix_status_watch_final", table_name="status_watch")
    op.drop_table("status_watch")
    op.drop_index("ix_run_approval_state", table_name="run_approval")
    op.drop_table("run_approval")
    op.drop_table("source_archive")
    op.drop_index("ix_run_source_repo_id", table_name="run_source")
    op.drop_table("run_source")
    if op.get_bind().dialect.name != "sqlite":
        op.execute("UPDATE run SET status = 'created' WHERE status = 'waiting_for_approval'")
        op.alter_column("run", "status", type_=sa.String(length=16), existing_type=sa.String(length=32),
                        existing_nullable=False)
    op.drop_column("repository", "api_url")
