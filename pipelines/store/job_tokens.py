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
  new token; the rows of attempts that ended are pruned by the workers' heartbeats).

The statements are built once here; the checks read through :class:`_Checks` (on PostgreSQL a
pool of their own, in autocommit, see there; on SQLite the read-only connections, so an upload's
check never waits for SQLite's writer).

Or, where the API and the workers share a key (``SANDPIT_JOB_TOKEN_KEY_FILE``, the same file on
every host), a *signed* token: ``spjs_<job id>.<attempt>.<HMAC-SHA256 of both>``, made by the
worker at the claim without a statement (:func:`sign_job_token`) and checked by the API without
the token's row (:func:`grant_for`): a token whose signature no key makes is 401, one naming
another job 403 — neither reads the database — and the attempt's liveness is still read from the
job's row on every request (one primary-key read, as the row token's check is one indexed read),
so a signed token is dead the moment its attempt ends, exactly as a row token: 409
``job_not_running`` is answered before anything of the request is stored. No expiry is signed in:
liveness is read per request, and a leaked token of an attempt that ended grants nothing. The
key file holds one key per line; the first signs, every one is accepted (rotation: add the new
key first on every host, restart, later remove the old). What it saves: the mint's ``INSERT``
on every claim (0.2-0.3 ms measured, bench/bench_workers.py) and the heartbeats' pruning of
dead rows; what it costs: a secret on every worker host and the API. Without a key file, row
tokens as above (the embedded and single-host set-ups need no secret).

>>> token_digest("spj_abc") == token_digest("spj_abc") != token_digest("spj_abd")
True
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
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

MINT = TOKENS.insert().values(token_sha256=sa.bindparam("p_sha"), job_id=sa.bindparam("p_job_id"),
                              attempt=sa.bindparam("p_attempt"), worker_id=sa.bindparam("p_worker"),
                              created_at=sa.bindparam("p_now", type_=UTCDateTime()))
GRANT = (
    sa.select(TOKENS.c.job_id, TOKENS.c.attempt, _JOBS.c.status, _JOBS.c.attempt.label("job_attempt"),
              _JOBS.c.run_id, _RUNS.c.trust)
    .select_from(TOKENS.join(_JOBS, _JOBS.c.id == TOKENS.c.job_id).join(_RUNS, _RUNS.c.id == _JOBS.c.run_id))
    .where(TOKENS.c.token_sha256 == sa.bindparam("p_sha"))
)
LIVE_ATTEMPT = (
    sa.select(_JOBS.c.status, _JOBS.c.attempt, _JOBS.c.run_id, _RUNS.c.trust)
    .select_from(_JOBS.join(_RUNS, _RUNS.c.id == _JOBS.c.run_id))
    .where(_JOBS.c.id == sa.bindparam("p_job_id"))
)
# the tokens of attempts that no longer run, whoever's worker minted them (a worker that died
# never prunes its own); a new attempt's mint no longer deletes the old ones: the check refuses
# them by their attempt already, and one statement less is on every claim's path
PRUNE = TOKENS.delete().where(~sa.exists().where(
    _JOBS.c.id == TOKENS.c.job_id, _JOBS.c.status == "running", _JOBS.c.attempt == TOKENS.c.attempt))


_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_TOKEN_LENGTH = len(TOKEN_PREFIX) + len(secrets.token_urlsafe(TOKEN_BYTES))


def looks_like_token(token: str) -> bool:
    """Whether ``token`` has the form a minted token has (the prefix, then 43 URL-safe base64
    characters) or a signed one's: what has neither is refused without a read.

    >>> looks_like_token("spj_" + "A" * 43), looks_like_token("spj_made-up"), looks_like_token("glpat-x")
    (True, False, False)
    """
    if token.startswith(SIGNED_PREFIX):
        return len(token) <= MAX_SIGNED_LENGTH and _SIGNED_CHARS.issuperset(token[len(SIGNED_PREFIX):])
    return (len(token) == _TOKEN_LENGTH and token.startswith(TOKEN_PREFIX)
            and _TOKEN_CHARS.issuperset(token[len(TOKEN_PREFIX):]))


SIGNED_PREFIX = "spjs_"
MAX_SIGNED_LENGTH = 200
MIN_KEY_BYTES = 32
_SIGNED_CHARS = _TOKEN_CHARS | {"."}


def _signature(key: bytes, job_id: str, attempt: int) -> str:
    mac = hmac.new(key, f"sandpit job token\0{job_id}\0{attempt}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def sign_job_token(key: bytes, job_id: str, attempt: int) -> str:
    """The signed token of attempt ``attempt`` of ``job_id`` (see the module docstring).

    >>> sign_job_token(b"k" * 32, "j1", 2)[:10]
    'spjs_j1.2.'
    """
    return f"{SIGNED_PREFIX}{job_id}.{attempt}.{_signature(key, job_id, attempt)}"


def signed_claims(keys: Sequence[bytes], token: str) -> tuple[str, int] | None:
    """The (job id, attempt) a signed token names, if one of ``keys`` made its signature; None
    for anything else (compared in constant time).

    >>> keys, token = (b"n" * 32, b"o" * 32), sign_job_token(b"o" * 32, "j1", 2)
    >>> signed_claims(keys, token), signed_claims(keys[:1], token), signed_claims(keys, token[:-1] + "x")
    (('j1', 2), None, None)
    """
    if not token.startswith(SIGNED_PREFIX) or len(token) > MAX_SIGNED_LENGTH:
        return None
    job_id, _, rest = token[len(SIGNED_PREFIX):].partition(".")
    attempt, _, signature = rest.partition(".")
    if not job_id or not attempt.isdigit() or len(attempt) > 9 or not signature:
        return None
    if not any(hmac.compare_digest(_signature(key, job_id, int(attempt)), signature) for key in keys):
        return None
    return job_id, int(attempt)


def read_token_keys(path: Path) -> tuple[bytes, ...]:
    """The signing keys in the file ``path`` (one per line, each at least 32 characters; the
    first signs); ValueError with the reason when it holds none that will do."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ValueError(f"SANDPIT_JOB_TOKEN_KEY_FILE {str(path)[:200]!r} cannot be read: {exc.strerror}") from None
    keys = tuple(line.strip() for line in lines if line.strip())
    if not keys or any(len(key) < MIN_KEY_BYTES for key in keys):
        raise ValueError(f"SANDPIT_JOB_TOKEN_KEY_FILE {str(path)[:200]!r} must hold one key per line, each at least "
                         f"{MIN_KEY_BYTES} characters (e.g. `openssl rand -base64 48`)")
    return keys


def token_digest(token: str) -> str:
    """What the store keeps of a token: its sha256, hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def mint_job_token(session: Session, job_id: str, attempt: int, worker_id: str, now: dt.datetime) -> str:
    """A new token for attempt ``attempt`` of ``job_id`` (call it in the claim's transaction):
    one ``INSERT``. Returns the token, which the store does not keep."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    session.connection().execute(MINT, {"p_sha": token_digest(token), "p_job_id": job_id, "p_attempt": attempt,
                              "p_worker": worker_id, "p_now": now})
    return token


def prune_job_tokens(session: Session) -> int:
    """Delete the tokens whose attempt no longer runs, any worker's (every worker's beat runs it:
    a worker that died leaves its own behind); how many went."""
    return int(session.connection().execute(PRUNE).rowcount or 0)


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


def grant_for(engine: sa.Engine, token: str, job_id: str, keys: Sequence[bytes] = ()) -> Grant:
    """Whether ``token`` may move files of job ``job_id`` now (see :class:`Grant`): one indexed
    read (the token's row joined to its job and run), on every upload's and fetch's path; for a
    signed token (``keys``: the API's), its signature first, then one primary-key read of the
    job's row and its run's, only when it names ``job_id``."""
    if token.startswith(SIGNED_PREFIX):
        claims = signed_claims(keys, token)
        if claims is None:
            return Grant("unknown")
        if claims[0] != job_id:
            return Grant("other_job")
        live = _checks(engine).read(LIVE_ATTEMPT, {"p_job_id": job_id})
        if live is None or live.status != "running" or live.attempt != claims[1]:
            return Grant("not_running", job_id=job_id, attempt=claims[1])
        return Grant(None, job_id=job_id, attempt=claims[1], run_id=live.run_id, trust=live.trust)
    row = _checks(engine).read(GRANT, {"p_sha": token_digest(token)})
    if row is None:
        return Grant("unknown")
    if row.job_id != job_id:
        return Grant("other_job")
    if row.status != "running" or row.job_attempt != row.attempt:
        return Grant("not_running", job_id=row.job_id, attempt=row.attempt)
    return Grant(None, job_id=row.job_id, attempt=int(row.attempt), run_id=row.run_id, trust=row.trust)


class _Checks:
    """Where the token check reads. On SQLite, the store's read-only connections (a check never
    waits for the writer). On PostgreSQL, a small pool of its own in autocommit and without the
    store's pre-ping: measured on this machine (bench/bench_workers.py), the store's pool spent
    0.83 ms on a check, 0.3 of it the pre-ping's ``SELECT 1`` and 0.15 switching the borrowed
    connection to autocommit and back, against 0.36 ms here: a single SELECT reads one
    consistent snapshot, so it needs no transaction around it. What the pre-ping guarded against
    (a connection the server closed, as at a PostgreSQL restart) costs one retry on a fresh
    connection instead (SQLAlchemy invalidates the whole pool on a disconnect). The pool goes
    when its store engine is disposed."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.pool: sa.Engine | None = None
        if engine.dialect.name == "postgresql":
            self.pool = sa.create_engine(engine.url, isolation_level="AUTOCOMMIT", pool_size=4, max_overflow=12)
            sa.event.listen(engine, "engine_disposed", lambda _engine: self.close())

    def read(self, statement: Any, params: dict[str, object]) -> Any:
        if self.pool is None:
            with reader(self.engine).connect() as connection:
                return connection.execute(statement, params).first()
        for tries_left in (1, 0):
            try:
                with self.pool.connect() as connection:
                    return connection.execute(statement, params).first()
            except sa.exc.DBAPIError as exc:
                if not exc.connection_invalidated or not tries_left:
                    raise
        return None  # not reached

    def close(self) -> None:
        if self.pool is not None:
            self.pool.dispose()
        _checkers.pop(self.engine, None)


_checkers: weakref.WeakKeyDictionary[sa.Engine, _Checks] = weakref.WeakKeyDictionary()


def _checks(engine: sa.Engine) -> _Checks:
    found = _checkers.get(engine)
    if found is None:
        found = _checkers[engine] = _Checks(engine)
    return found


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
    return _checks(engine).read(RUN_KEPT_BLOB, {"p_run_id": run_id, "p_sha": sha256}) is not None


def cache_manifest_at(engine: sa.Engine, trust: str, sha256: str) -> bool:
    """Whether ``sha256`` is the manifest of a cache entry of trust level ``trust`` (a job may
    fetch its own level's caches, never the other's)."""
    return _checks(engine).read(CACHE_MANIFEST_AT, {"p_sha": sha256, "p_trust": trust}) is not None
