"""A run's auto-cancel settings, the files the store stopped naming, and the indexes retention asks with.

``run_auto_cancel`` holds a run's ``workflow:auto_cancel`` when it is not GitLab's default (no
row: ``on_new_commit: conservative``, ``on_job_failure: none``, which every run before this
revision had). ``expired_blob`` lists stored files no row names any more (an expired artifact, a
replaced cache archive), for each host to remove its copy. ``ix_artifact_sha256`` and
``ix_run_source_archive_sha256`` let retention ask which stored files and uploaded trees rows
still name without reading every row.

Revision ID: 0010
Revises: 0008 (there is no revision 0009: the number was never released)
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "run_auto_cancel",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("on_new_commit", sa.String(length=16), nullable=False),
        sa.Column("on_job_failure", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_table(
        "expired_blob",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("expired_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_expired_blob_expired_at", "expired_blob", ["expired_at"], unique=False)
    op.create_index("ix_artifact_sha256", "artifact", ["sha256"], unique=False)
    op.create_index("ix_run_source_archive_sha256", "run_source", ["archive_sha256"], unique=False)


def downgrade() -> None:
    """Downgrade schema (runs keep GitLab's default auto-cancel)."""
    op.drop_index("ix_run_source_archive_sha256", table_name="run_source")
    op.drop_index("ix_artifact_sha256", table_name="artifact")
    op.drop_index("ix_expired_blob_expired_at", table_name="expired_blob")
    op.drop_table("expired_blob")
    op.drop_table("run_auto_cancel")
