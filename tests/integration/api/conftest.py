"""API fixtures: a real redis-server, a migrated database (SQLite file and PostgreSQL), and the
app served by a real uvicorn server on 127.0.0.1 in a thread, reached with httpx.

Tests play the worker themselves: they claim and finish jobs through the store and write log
stream entries and log files the way the worker does.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from sqlalchemy.engine import Engine

from api.app import create_app
from api.publish import Publisher
from api.settings import ApiSettings, parse_tokens
from pipelines.names import log_stream_key
from pipelines.store.db import make_engine, migrate, session_scope
from pipelines.store.transitions import claim_job, finish_job
from tests.conftest import require

USER_TOKEN = "tok-user-1234"
TRUSTED_TOKEN = "tok-ci-5678"
TOKENS = f"user:{USER_TOKEN},ci:{TRUSTED_TOKEN}:trusted"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, stopped by pid at the end."""
    binary = shutil.which("redis-server")
    require(binary is not None, "needs redis-server installed (apt-get install redis-server)")
    assert binary is not None
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir",
         str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        yield url
    finally:
        client.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


@pytest.fixture
def rds(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the test Redis, emptied before each test."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def settings(db_url: str, redis_url: str, rds: redis.Redis, tmp_path: Path) -> ApiSettings:
    migrate(db_url)
    state = tmp_path / "state"
    state.mkdir()
    return ApiSettings(database_url=db_url, redis_url=redis_url, state_dir=state, tokens=parse_tokens(TOKENS),
                       max_body_bytes=64 * 1024)


@pytest.fixture
def engine(settings: ApiSettings) -> Iterator[Engine]:
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


@dataclass
class LiveServer:
    url: str


@contextlib.contextmanager
def serve_in_thread(settings: ApiSettings, publisher: Publisher | None = None) -> Iterator[LiveServer]:
    """The app under a real uvicorn server on 127.0.0.1, stopped when the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings, publisher=publisher), log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield LiveServer(f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def live(settings: ApiSettings) -> Iterator[LiveServer]:
    with serve_in_thread(settings) as server:
        yield server


@pytest.fixture
def client(live: LiveServer) -> Iterator[httpx.Client]:
    """An httpx client with the untrusted user's token."""
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {USER_TOKEN}"}, timeout=20) as c:
        yield c


@pytest.fixture
def anon(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=20) as c:
        yield c


# --- playing the worker ------------------------------------------------------------------

def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def claim(engine: Engine, job_id: str) -> int:
    with session_scope(engine) as session:
        job = claim_job(session, job_id, "test-worker", now(), lease_s=30)
        assert job is not None, f"job {job_id} was not claimable"
        return job.attempt


def finish(engine: Engine, job_id: str, attempt: int = 1, **record: Any) -> list[str]:
    full = {
        "status": "succeeded", "reason": None, "exit_code": 0, "signal": None, "duration_s": 0.25,
        "started_at": now().isoformat(), "finished_at": now().isoformat(),
        "usage": {"cpu_s": 0.01, "memory_peak_bytes": 1024, "pids_peak": 1},
        "artifacts": [], "rejected_artifacts": [], **record,
    }
    with session_scope(engine) as session:
        return finish_job(session, job_id, attempt, full, now())


def write_stream(rds: redis.Redis, job_id: str, chunks: list[tuple[str, str]]) -> list[str]:
    """Append log chunks ``(stream, text)`` as the worker does; returns the entry ids."""
    return [str(rds.xadd(log_stream_key(job_id), {"t": f"{time.time():.3f}", "s": s, "d": d})) for s, d in chunks]


def write_eof(rds: redis.Redis, job_id: str, status: str = "succeeded") -> None:
    rds.xadd(log_stream_key(job_id), {"eof": "1", "status": status})


def write_log_file(path: Path, chunks: list[tuple[str, str]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for t, (s, d) in enumerate(chunks):
            fh.write(json.dumps({"t": float(t), "s": s, "d": d}) + "\n")
    return str(path)


PIPELINE = """\
stages: [build, test]
build:
  stage: build
  script: [make]
test:
  stage: test
  script: [make check]
"""


def create(client: httpx.Client, text: str = PIPELINE, **params: Any) -> dict[str, Any]:
    response = client.post("/api/v1/runs", content=text, headers={"Content-Type": "application/yaml"}, params=params)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def jobs_of(engine: Engine, run_id: str) -> list[str]:
    from sqlmodel import col, select

    from pipelines.store.models import Job

    with session_scope(engine) as session:
        return list(session.exec(select(Job.id).where(Job.run_id == run_id).order_by(col(Job.position))).all())


@pytest.fixture
def live_url(live: LiveServer) -> str:
    return live.url
