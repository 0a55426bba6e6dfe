"""Integration fixtures: a real database per test, SQLite file and a throwaway PostgreSQL.

``db_url`` is parametrised over both backends; each test gets an empty database of its own.
Without PostgreSQL binaries the postgres cases skip (fail under ``SANDPIT_REQUIRE_ALL=1``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import require
from tests.integration.postgres import PostgresServer, missing_requirement, postgres_server

_db_names = itertools.count(1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    why = missing_requirement()
    require(why is None, why or "")
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of the parametrised kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sandpit.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    name = f"sandpit_test_{next(_db_names)}"
    admin = sa.create_engine(server.url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        yield server.url(name)
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        admin.dispose()
