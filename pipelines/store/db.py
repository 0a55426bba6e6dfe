"""Engines, sessions and migrations: the one place that connects to the database.

SQLite (the default, ``sqlite:///<state_dir>/sandpit.db``) is opened in WAL mode with foreign
keys on and a busy timeout, and every transaction of :func:`session_scope` starts with ``BEGIN
IMMEDIATE``: SQLite has one writer at a time anyway, and taking the write lock up front means a
transaction never fails half-way with "database is locked" when its snapshot turns out to be
stale (it waits instead). :func:`read_scope` is for transactions that only read: a plain
(deferred) ``BEGIN`` reads a WAL snapshot without taking the write lock, so readers (the API
showing a run, ``?wait``) never queue behind a worker's claim or result, nor hold it up.
:func:`migrate` holds a migration lock (an advisory lock on PostgreSQL, a file lock beside a
SQLite file), so processes starting together on a fresh database migrate one at a time.
PostgreSQL comes through ``SANDPIT_DATABASE_URL`` (read by the entry point, passed in here);
a plain ``postgresql://`` URL is given the psycopg 3 driver.

>>> make_engine("sqlite://").dialect.name
'sqlite'
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipelines.files.locks import hold
from pipelines.store.errors import MigrationFailed
from pipelines.store.writer_turn import WriterTurn, turn_for

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def default_url(state_dir: Path) -> str:
    """The database sandpit uses when ``SANDPIT_DATABASE_URL`` is not set."""
    return f"sqlite:///{state_dir / 'sandpit.db'}"


def normalise_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` mean psycopg 3; other URLs are used as given."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, **options: Any) -> Engine:
    """An engine for ``url`` set up for the store's transactions (see the module docstring)."""
    url = normalise_url(url)
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True, **options)
    if url not in ("sqlite://", "sqlite:///:memory:"):
        _owner_only(sa.engine.make_url(url).database)
    connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    engine = sa.create_engine(url, connect_args=connect_args, **options)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to the "begin" hook below (pysqlite would BEGIN lazily).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if url not in ("sqlite://", "sqlite:///:memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        read_only = connection.get_execution_options().get(_READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _owner_only(path: str | None) -> None:
    """Make (or keep) the SQLite file readable by its owner only: it holds every run's pipeline,
    variables and secrets. SQLite gives its -wal and -shm files the database file's mode, so they
    follow. A file that cannot be made or changed here is left to SQLite to report.

    An existing file is changed by its path and never opened: closing any descriptor of a file
    drops every POSIX lock the process holds on it, so an open-and-close here would silently drop
    the locks of this process's live SQLite connections (a second ``make_engine`` in one process),
    and another process could then reset the side files under them and leave them reading an old
    snapshot. Only a file that did not exist yet (so nothing of this process can hold it) is made."""
    if not path or path == ":memory:":
        return
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)
    except OSError:
        return


_READ_ONLY = "sandpit_read_only"
_READER_ATTRIBUTE = "_sandpit_reader"


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back if it raises.

    Objects stay readable after the commit (``expire_on_commit=False``), so a caller can use
    what a transition returned once the session is gone.
    On a SQLite file the writers of all sandpit processes take turns first
    (:mod:`pipelines.store.writer_turn`): a queue instead of SQLite's sleeping busy-wait.
    """
    turn = _turn_of(engine)
    with turn.held() if turn is not None else contextlib.nullcontext(), \
            Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


_engine_turns: weakref.WeakKeyDictionary[Engine, WriterTurn | None] = weakref.WeakKeyDictionary()


def _turn_of(engine: Engine) -> WriterTurn | None:
    try:
        return _engine_turns[engine]
    except KeyError:
        pass
    url = engine.url
    database = url.database if url.get_backend_name() == "sqlite" else None
    memory = not database or database == ":memory:" or database.startswith("file:")
    found = _engine_turns[engine] = None if memory else turn_for(str(database), SQLITE_BUSY_TIMEOUT_MS / 1000)
    return found


@contextmanager
def read_scope(engine: Engine) -> Iterator[Session]:
    """A transaction that only reads (a consistent snapshot); nothing it changes is kept.

    On SQLite it does not take the write lock (see the module docstring); elsewhere it is an
    ordinary transaction. It ends when the block does (the pool rolls it back); what it loaded
    stays readable.
    """
    with Session(reader(engine), expire_on_commit=False, autoflush=False) as session:
        yield session


def reader(engine: Engine) -> Engine:
    """``engine`` for reading only: its transactions are those of :func:`read_scope` (for Core
    statements: ``with reader(engine).connect() as connection``)."""
    found: Engine | None = getattr(engine, _READER_ATTRIBUTE, None)
    if found is None:
        found = engine.execution_options(**{_READ_ONLY: True})
        # kept on the engine, not in a weak-keyed map: the reader refers to its engine, so as a
        # map's value it would keep its own key (and the engine's pool and its connections, and
        # the database's writer turn) alive for as long as the process lives
        setattr(engine, _READER_ATTRIBUTE, found)
    return found


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Passed as an attribute, not an option: configparser would read `%` in a password.
    config.attributes["sandpit_url"] = normalise_url(url)
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision``; running it again changes nothing.

    Processes that start together (the API and its workers on a fresh database) migrate one
    after the other (:func:`migration_lock`): unserialised, two of them both saw no
    ``alembic_version`` and the second died on its ``UniqueViolation``. Whoever comes second
    finds the schema at head and does nothing.
    """
    try:
        with migration_lock(url):
            command.upgrade(alembic_config(url), revision)
    except sa.exc.SQLAlchemyError as exc:
        raise MigrationFailed(f"migrating {sa.make_url(normalise_url(url))!r} failed: {exc}") from exc


# pg_advisory_lock's key for migrations: "sandpit" and 1, as one bigint (any constant would do,
# it only has to be the same in every sandpit process and unlike other applications' keys)
MIGRATION_LOCK_KEY = 0x73616E6470697401


@contextmanager
def migration_lock(url: str) -> Iterator[None]:
    """Hold the database's migration lock: on PostgreSQL a session-level advisory lock on a
    connection of its own (the server drops it if the process dies), on a SQLite file an
    exclusive ``flock`` on ``<db>.migrate.lock`` beside it (the kernel drops it likewise;
    SQLite's own lock cannot be held across Alembic's connections). An in-memory SQLite
    database has one process only: nothing to hold."""
    parsed = sa.make_url(normalise_url(url))
    if parsed.get_backend_name() == "postgresql":
        engine = sa.create_engine(parsed, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                connection.commit()
                try:
                    yield
                finally:
                    connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                    connection.commit()
        finally:
            engine.dispose()
        return
    database = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    # 0600 like the database itself; nothing is ever written into it
    with hold(f"{database}.migrate.lock"):
        yield


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
