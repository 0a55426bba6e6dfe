"""Indexes that keep what one job costs the same however many runs and jobs the store holds.

Measured with 100,000 finished jobs (bench/bench_history.py), each of these reads walked the
history:

- a run list filtered by status, ref or source read the ``created_at`` index row by row (or every
  run of the status, then sorted them) until it had a page: ``ix_run_status_created_at``,
  ``ix_run_ref_created_at``, ``ix_run_source_created_at`` give each filter its page newest first.
  ``ix_run_status`` goes: it is the first column of the new status index;
- the pending outbox rows (the sweeper's ``pending_outbox``, ``/metrics``) were found by walking
  every published row in ``id`` order: ``ix_outbox_pending`` is a partial index on the rows not
  published yet, so it holds only those;
- which cache entry names a stored file (every expired artifact's removal asks) read every entry:
  ``ix_cache_entry_sha256``.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PENDING = sa.text("published_at IS NULL")


def upgrade() -> None:
    """Upgrade schema."""
    op.create_index("ix_run_status_created_at", "run", ["status", "created_at", "id"], unique=False)
    op.create_index("ix_run_ref_created_at", "run", ["ref", "created_at", "id"], unique=False)
    op.create_index("ix_run_source_created_at", "run", ["source", "created_at", "id"], unique=False)
    op.drop_index("ix_run_status", table_name="run")
    op.create_index("ix_outbox_pending", "outbox", ["id"], unique=False, sqlite_where=_PENDING,
                    postgresql_where=_PENDING)
    op.create_index("ix_cache_entry_sha256", "cache_entry", ["sha256"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_cache_entry_sha256", table_name="cache_entry")
    op.drop_index("ix_outbox_pending", table_name="outbox")
    op.create_index("ix_run_status", "run", ["status"], unique=False)
    op.drop_index("ix_run_source_created_at", table_name="run")
    op.drop_index("ix_run_ref_created_at", table_name="run")
    op.drop_index("ix_run_status_created_at", table_name="run")
