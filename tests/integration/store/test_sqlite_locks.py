"""A second ``make_engine`` in a process never drops the SQLite locks its live connections hold
(pipelines/store/db.py ``_owner_only``): closing any descriptor of a file drops all of a process's
POSIX locks on it, after which another process may reset the WAL files under those connections."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from pipelines.store.db import make_engine

# SQLite's shared-lock byte range on the database file (PENDING_BYTE + 2, 510 bytes): another
# process can take it exclusively only when no connection holds a shared lock
_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 510, 0x40000002, 0)
    print("free")
except OSError:
    print("held")
"""


def _shared_lock(path: Path) -> str:
    return subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_a_second_engine_keeps_the_first_engines_locks(tmp_path: Path) -> None:
    """A connection's shared lock is still held, as another process sees it, after the process
    makes a second engine for the same file; and the file is the owner's only."""
    path = tmp_path / "db.sqlite"
    first = make_engine(f"sqlite:///{path}")
    try:
        with first.connect() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            connection.exec_driver_sql("SELECT count(*) FROM t").all()
            assert _shared_lock(path) == "held"
            os.chmod(path, 0o644)
            second = make_engine(f"sqlite:///{path}")
            assert _shared_lock(path) == "held", "making an engine dropped this process's SQLite locks"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            second.dispose()
    finally:
        first.dispose()


def test_a_new_database_file_is_made_owner_only(tmp_path: Path) -> None:
    """The file does not exist yet: make_engine creates it 0600 before SQLite writes a byte."""
    path = tmp_path / "new.sqlite"
    engine = make_engine(f"sqlite:///{path}")
    try:
        assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        engine.dispose()
