"""Per-job tokens: what a worker that shares no disk with the API shows when it uploads or fetches
a job's files (adapter). GitLab's job-token model, narrowed to the worker:

- minted by the worker in the transaction that claims the attempt (:func:`mint_job_token`), 32
  random bytes, handed to nobody but that worker (a job never sees it: its environment is an
  allow-list), and stored as its sha256 only: a copy of the database grants nothing. A plain
  sha256 suffices (no slow hash) because the token is random, not a password to guess;
- good for one job only: the API's routes name the job, and :func:`grant_for` answers
  ``other_job`` for a token of another;
- good while that attempt runs, and no longer: every check reads the job's row, so a token is
  dead the moment its job is recorded, cancelled and settled, or retried (a new attempt mints a
  new token and the old rows of that job are deleted then).

The statements are built once here; :func:`grant_for` runs on a read-only connection of its
own (an upload's check never waits for SQLite's writer).

>>> token_digest("spj_abc") == token_digest("spj_abc") != token_digest("spj_abd")
True
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from pipelines.store.db import reader
from pipelines.store.models import Artifact, CacheEntry, Job, JobToken, Run, UTCDateTime

#: tokens start so, so one found in a log or a paste is recognised for what it is (like GitLab's ``glcbt-``)
TOKEN_PREFIX = "spj_"  # noqa: S105 - a prefix, not a secret
TOKEN_BYTES = 32

TOKENS: Any = JobToken.__table__  # type: ignore[attr-defined]
_JOBS: Any = Job.__table__  # type: ignore[attr-defined]
_RUNS: Any = Run.__table__  # type: ignore[attr-defined]

DROP_JOB_TOKENS = TOKENS.delete().where(TOKENS.c.job_id == sa.bindparam("p_job_id"))
MINT = TOKENS.insert().values(token_sha256=sa.bindparam("p_sha"), job_id=sa.bindparam("p_job_id"),
                              attempt=sa.bindparam("p_attempt"), worker_id=sa.bindparam("p_worker"),
                              created_at=sa.bindparam("p_now", type_=UTCDateTime()))
GRANT = (
    sa.select(TOKENS.c.job_id, TOKENS.c.attempt, _JOBS.c.status, _JOBS.c.attempt.label("job_attempt"),
              _JOBS.c.run_id, _RUNS.c.trust)
    .select_from(TOKENS.join(_JOBS, _JOBS.c.id == TOKENS.c.job_id).join(_RUNS, _RUNS.c.id == _JOBS.c.run_id))
    .where(TOKENS.c.token_sha256 == sa.bindparam("p_sha"))
)
# the tokens of attempts that no longer run (their worker died, or it could not delete them)
PRUNE = TOKENS.delete().where(TOKENS.c.worker_id == sa.bindparam("p_worker"), ~sa.exists().where(
    _JOBS.c.id == TOKENS.c.job_id, _JOBS.c.status == "running", _JOBS.c.attempt == TOKENS.c.attempt))


def token_digest(token: str) -> str:
    """What the store keeps of a token: its sha256, hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def mint_job_token(session: Session, job_id: str, attempt: int, worker_id: str, now: dt.datetime) -> str:
    """A new token for attempt ``attempt`` of ``job_id`` (call it in the claim's transaction);
    the job's older tokens are deleted. Returns the token, which the store does not keep."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    connection = session.connection()
    connection.execute(DROP_JOB_TOKENS, {"p_job_id": job_id})
    connection.execute(MINT, {"p_sha": token_digest(token), "p_job_id": job_id, "p_attempt": attempt,
                              "p_worker": worker_id, "p_now": now})
    return token


def prune_job_tokens(session: Session, worker_id: str) -> int:
    """Delete ``worker_id``'s tokens whose attempt no longer runs; how many went."""
    return int(session.connection().execute(PRUNE, {"p_worker": worker_id}).rowcount or 0)


@dataclass(frozen=True, slots=True)
class Grant:
    """What a presented token may do, or why not. ``refusal`` is None when the token is good for
    the job the request names: ``unknown`` (no such token), ``other_job`` (a token of another
    job), ``not_running`` (its attempt has ended or was superseded)."""

    refusal: str | None
    job_id: str = ""
    attempt: int = 0
    run_id: str = ""
    trust: str = ""


def grant_for(engine: sa.Engine, token: str, job_id: str) -> Grant:
    """Whether ``token`` may move files of job ``job_id`` now (see :class:`Grant`). One statement
    and, on PostgreSQL, no transaction around it: it is on every upload's path, and BEGIN and
    ROLLBACK were two of its four round trips (a single SELECT reads one consistent snapshot)."""
    if engine.dialect.name != "postgresql":
        with reader(engine).connect() as connection:
            row = connection.execute(GRANT, {"p_sha": token_digest(token)}).first()
    else:
        with engine.connect() as connection:  # psycopg's autocommit is a flag on the connection
            autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
            row = autocommit.execute(GRANT, {"p_sha": token_digest(token)}).first()
    if row is None:
        return Grant("unknown")
    if row.job_id != job_id:
        return Grant("other_job")
    if row.status != "running" or row.job_attempt != row.attempt:
        return Grant("not_running", job_id=row.job_id, attempt=row.attempt)
    return Grant(None, job_id=row.job_id, attempt=int(row.attempt), run_id=row.run_id, trust=row.trust)


_ARTIFACTS: Any = Artifact.__table__  # type: ignore[attr-defined]
_CACHE: Any = CacheEntry.__table__  # type: ignore[attr-defined]
RUN_KEPT_BLOB = (
    sa.select(sa.literal(1)).select_from(_ARTIFACTS.join(_JOBS, _JOBS.c.id == _ARTIFACTS.c.job_id))
    .where(_JOBS.c.run_id == sa.bindparam("p_run_id"), _ARTIFACTS.c.sha256 == sa.bindparam("p_sha")).limit(1)
)
CACHE_MANIFEST_AT = (sa.select(sa.literal(1)).where(_CACHE.c.sha256 == sa.bindparam("p_sha"),
                                                     _CACHE.c.trust == sa.bindparam("p_trust")).limit(1))


def run_kept(engine: sa.Engine, run_id: str, sha256: str) -> bool:
    """Whether a job of run ``run_id`` kept a file with content ``sha256`` (a job may fetch the
    artifacts of its own run's jobs: its dependencies')."""
    with reader(engine).connect() as connection:
        return connection.execute(RUN_KEPT_BLOB, {"p_run_id": run_id, "p_sha": sha256}).first() is not None


def cache_manifest_at(engine: sa.Engine, trust: str, sha256: str) -> bool:
    """Whether ``sha256`` is the manifest of a cache entry of trust level ``trust`` (a job may
    fetch its own level's caches, never the other's)."""
    with reader(engine).connect() as connection:
        return connection.execute(CACHE_MANIFEST_AT, {"p_sha": sha256, "p_trust": trust}).first() is not None
