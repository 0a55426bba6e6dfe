"""Migrations on a real database."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from pipelines.store.db import alembic_config, current_revision, make_engine, migrate

TABLES = {"run", "job", "job_attempt", "artifact", "cache_entry", "outbox", "alembic_version"}


def test_migrate_creates_every_table_on_an_empty_database(db_url: str) -> None:
    """migrate() on an empty database creates every table and records the head revision."""
    migrate(db_url)
    engine = make_engine(db_url)
    try:
        assert TABLES <= set(sa.inspect(engine).get_table_names())
        head = ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
        assert current_revision(engine) == head
    finally:
        engine.dispose()


def test_migrate_twice_changes_nothing(db_url: str) -> None:
    """Running migrate() again on a migrated database is a no-op and raises nothing."""
    migrate(db_url)
    migrate(db_url)
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) is not None
    finally:
        engine.dispose()


def test_migrations_match_the_models(db_url: str) -> None:
    """The migrated schema matches the SQLModel tables (alembic check finds nothing to add)."""
    migrate(db_url)
    command.check(alembic_config(db_url))


def test_downgrade_to_base_removes_the_tables(db_url: str) -> None:
    """The initial revision downgrades cleanly, so a bad upgrade can be rolled back."""
    migrate(db_url)
    command.downgrade(alembic_config(db_url), "base")
    engine = make_engine(db_url)
    try:
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
