"""The files each cache manifest lists: ``cache_blob``, so that expiring an artifact never takes a
stored file a live cache still holds (pipelines/store/cache_blobs.py).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02

One new table and its index; caches saved before it have no member rows, so their files are only
as safe as before (a cache with a file gone is a miss, never half restored) until they are saved
again. The downgrade drops the table.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "cache_blob",
        sa.Column("manifest_sha256", sa.String(length=64), nullable=False),
        sa.Column("blob_sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("manifest_sha256", "blob_sha256"),
    )
    op.create_index("ix_cache_blob_blob_sha256", "cache_blob", ["blob_sha256"], unique=False)


def downgrade() -> None:
    """Downgrade schema (the member rows are dropped; caches stay usable)."""
    op.drop_index("ix_cache_blob_blob_sha256", table_name="cache_blob")
    op.drop_table("cache_blob")
