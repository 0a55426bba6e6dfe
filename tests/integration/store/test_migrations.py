"""Migrations on a real database."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from pipelines.store.db import alembic_config, current_revision, make_engine, migrate

TABLES = {"run", "job", "job_edge", "job_attempt", "artifact", "cache_entry", "outbox", "alembic_version"}
REPO = Path(__file__).resolve().parents[3]


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


def test_0013_gives_the_links_stored_their_runs_creation_time(db_url: str) -> None:
    """A web-hook run linked before revision 0013 gets its run's created_at on the link, so the
    repository's list (read from the link's index) still shows it, in its place."""
    config = alembic_config(db_url)
    command.upgrade(config, "0012")
    engine = make_engine(db_url)
    created = "2026-11-30 12:00:00"
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO repository (id, name, forge, clone_url, secret_sealed, pipeline_path, default_branch, "
                "fork_policy, created_at) VALUES ('r1', 'acme/app', 'gitea', 'http://127.0.0.1:9/x.git', 'x', "
                "'.gitlab-ci.yml', 'main', 'approve', :at)"), {"at": created})
            conn.execute(sa.text(
                "INSERT INTO run (id, created_at, status, cancelled, trust, source, pipeline, variables, stages, ref, "
                "sha, message) VALUES ('run-1', :at, 'succeeded', false, 'trusted', 'webhook', '', '{}', '[]', "
                "'main', '', '')"),
                {"at": created})
            conn.execute(sa.text("INSERT INTO repository_run (run_id, repo_id, kind, ref, from_fork) "
                                 "VALUES ('run-1', 'r1', 'push', 'main', false)"))
        command.upgrade(config, "head")
        with engine.connect() as conn:
            got = conn.execute(sa.text("SELECT created_at FROM repository_run WHERE run_id = 'run-1'")).scalar()
        assert str(got)[:19] == created
        from pipelines.store import listing
        from pipelines.store.db import session_scope

        with session_scope(engine) as session:
            page = listing.list_runs(session, listing.RunFilter(repository="acme/app"))
        assert [run.id for run in page.runs] == ["run-1"]
    finally:
        engine.dispose()


_COLD_START = """
import pathlib, sys, time
from pipelines.store.db import migrate
ready, go = pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.005)
migrate(sys.argv[1])
"""


def test_processes_starting_together_on_a_fresh_database_all_migrate(db_url: str, tmp_path: Path) -> None:
    """Three processes (the API and two workers at a cold start) call migrate() on one fresh
    database at the same moment: all succeed, and the schema is there once, at head."""
    made: list[str] = []
    try:
        for attempt in range(3):  # each round on a database none of them has seen
            url = db_url if attempt == 0 else _fresh_copy_of(db_url, tmp_path, attempt)
            made.append(url)
            _cold_start(url, tmp_path, attempt)
    finally:
        for url in made[1:]:
            _drop(url)


def _cold_start(url: str, tmp_path: Path, attempt: int) -> None:
    """Start three migrating processes at once on ``url``; check they all succeeded."""
    go = tmp_path / f"go-{attempt}"
    readies = [tmp_path / f"ready-{attempt}-{i}" for i in range(3)]
    procs = [
        subprocess.Popen([sys.executable, "-c", _COLD_START, url, str(ready), str(go)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for ready in readies
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in readies) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        errors = [proc.communicate(timeout=120)[1].decode(errors="replace") for proc in procs]
        outcomes = [(proc.returncode, err) for proc, err in zip(procs, errors, strict=True)]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert [code for code, _ in outcomes] == [0, 0, 0], [err[-2000:] for _, err in outcomes]
    engine = make_engine(url)
    try:
        head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        with engine.connect() as connection:
            versions = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
        assert versions == [head]
        assert TABLES <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _fresh_copy_of(db_url: str, tmp_path: Path, attempt: int) -> str:
    """Another empty database on the same server (SQLite: another file)."""
    if db_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / f'cold-{attempt}.db'}"
    url = sa.make_url(db_url)
    name = f"{url.database}_cold{attempt}"
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
    finally:
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def _drop(url: str) -> None:
    if url.startswith("sqlite"):
        return
    parsed = sa.make_url(url)
    admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {parsed.database} WITH (FORCE)")
    finally:
        admin.dispose()
