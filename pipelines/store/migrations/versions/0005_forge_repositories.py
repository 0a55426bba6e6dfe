"""Forge repositories, their web-hook deliveries, and the runs web-hooks created.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

New tables only (``repository``, ``webhook_delivery``, ``repository_run``); nothing existing
changes, so the downgrade drops them and loses only forge data.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "repository",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("forge", sa.String(length=16), nullable=False),
        sa.Column("clone_url", sa.Text(), nullable=False),
        sa.Column("secret_sealed", sa.Text(), nullable=False),
        sa.Column("token_sealed", sa.Text(), nullable=True),
        sa.Column("pipeline_path", sa.String(length=255), nullable=False),
        sa.Column("default_branch", sa.String(length=255), nullable=False),
        sa.Column("fork_policy", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("secret_rotated_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("repo_id", sa.String(length=36), nullable=False),
        sa.Column("delivery_id", sa.String(length=255), nullable=True),
        sa.Column("body_sha256", sa.String(length=64), nullable=True),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("verdict", sa.String(length=32), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=True),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["repo_id"], ["repository.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("repo_id", "delivery_id", name="uq_delivery_repo_delivery"),
        sa.UniqueConstraint("repo_id", "body_sha256", name="uq_delivery_repo_body"),
    )
    op.create_index("ix_webhook_delivery_repo_id", "webhook_delivery", ["repo_id"], unique=False)
    op.create_index("ix_webhook_delivery_received_at", "webhook_delivery", ["received_at"], unique=False)
    op.create_table(
        "repository_run",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("repo_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("ref", sa.String(length=255), nullable=False),
        sa.Column("merge_request_iid", sa.Integer(), nullable=True),
        sa.Column("from_fork", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["repo_id"], ["repository.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_index("ix_repository_run_repo_id", "repository_run", ["repo_id"], unique=False)
    op.create_index("ix_repository_run_repo_mr", "repository_run", ["repo_id", "merge_request_iid"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_repository_run_repo_mr", table_name="repository_run")
    op.drop_index("ix_repository_run_repo_id", table_name="repository_run")
    op.drop_table("repository_run")
    op.drop_index("ix_webhook_delivery_received_at", table_name="webhook_delivery")
    op.drop_index("ix_webhook_delivery_repo_id", table_name="webhook_delivery")
    op.drop_table("webhook_delivery")
    op.drop_table("repository")
