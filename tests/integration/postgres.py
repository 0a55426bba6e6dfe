"""A throwaway PostgreSQL server for tests: initdb in a temp dir, 127.0.0.1 only, stopped by pid.

initdb refuses to run as root, so the binaries run as the ``postgres`` user through
``runuser``; the data dir lives in a temp dir that user owns. Unix sockets are off, so the
server is reachable on one free loopback port only, with trust auth (nothing else can reach it).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PG_USER = "postgres"


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    pid: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{PG_USER}@{self.host}:{self.port}/{database}"


def find_bin_dir() -> Path | None:
    """The directory holding initdb and postgres: PATH first, then Debian's versioned dirs."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        return Path(os.path.realpath(on_path)).parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "postgres").exists():
            return Path(candidate)
    return None


def missing_requirement() -> str | None:
    """Why a server cannot be started here, or None when it can."""
    if find_bin_dir() is None:
        return "PostgreSQL server binaries (initdb, postgres) not found: apt-get install postgresql"
    if os.geteuid() != 0:
        return "starting a throwaway PostgreSQL needs root (to run it as the postgres user)"
    if shutil.which("runuser") is None:
        return "runuser (util-linux) not found"
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        return "no `postgres` system user (the postgresql package creates it)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(*argv: str) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *argv]


def _wait_ready(port: int, data: Path, proc: subprocess.Popen[bytes], log: Path) -> int:
    deadline = time.monotonic() + 60
    pid_file = data / "postmaster.pid"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        if pid_file.exists():
            lines = pid_file.read_text().splitlines()
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return int(lines[0])
        time.sleep(0.05)
    raise RuntimeError(f"postgres did not become ready on port {port}:\n{log.read_text(errors='replace')}")


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a fresh server; stop it by pid and delete its files on the way out, always."""
    bin_dir = find_bin_dir()
    assert bin_dir is not None
    user = pwd.getpwnam(PG_USER)
    root = Path(tempfile.mkdtemp(prefix="sandpit-pg-"))
    data = root / "data"
    log = root / "server.log"
    os.chown(root, user.pw_uid, user.pw_gid)
    proc: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    try:
        subprocess.run(
            _as_postgres(
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                PG_USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ),
            check=True,
            capture_output=True,
            cwd=root,
        )
        port = _free_port()
        with open(log, "wb") as log_file:
            proc = subprocess.Popen(
                _as_postgres(
                    str(bin_dir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=100",
                ),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=root,
            )
        pid = _wait_ready(port, data, proc, log)
        yield PostgresServer("127.0.0.1", port, pid)
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)  # "fast" shutdown: roll back sessions, exit
        if proc is not None:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)
