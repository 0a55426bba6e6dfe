"""Where a job's files travel between the worker and the API: the one seam, two transports.

``SANDPIT_ARTIFACT_TRANSPORT`` chooses:

- ``local`` (default; ``sandpit up``, one host, or hosts sharing the state dir's filesystem): the
  worker writes artifacts, caches and logs into the state dir and the API serves them from the
  same files. Nothing travels; every method here does nothing.
- ``http`` (workers on hosts that share only Redis and the database with the API): the worker
  mints a per-job token at the claim, fetches what the job starts with from the API before it
  runs, and uploads what it kept before its result is recorded (``worker.remote_files``). The
  API URL is ``SANDPIT_API_URL``.

Why HTTP to the API and not an S3-compatible object store: it needs nothing the deployment does
not already run (the API is there, and a bucket would be one more service with credentials on
every worker host), the job token keeps each upload scoped to one running job (a bucket key
would let any worker host write anything), and the API checks every byte against its sha256 as
it arrives. An object store could be a third transport behind the same seam.

The order is the contract: a job's files are delivered *before* its result is recorded, while
its lease is still held and its token still good. Its dependents are queued only by that
record, so whichever worker runs them finds every artifact they need at the API, and a result is
never recorded for files the API does not have.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from sqlmodel import Session

from pipelines.job_record import JobRecord
from pipelines.store.models import Job
from worker.cache import SavedCache
from worker.errors import ConfigError
from worker.settings import Settings

TRANSPORTS = ("local", "http")


class JobFiles(Protocol):
    """One claimed attempt's file traffic."""

    def fetch(self, sha256s: Sequence[str], cache: str | None = None) -> None:
        """Make the local store hold these files (fetched when missing; ``cache``: the manifest
        that lists them). A file that cannot be had is left missing: the job's seeding or the
        cache restore then reports it as it always did."""

    def fetch_caches(self, found: Sequence[tuple[str, str]]) -> None:
        """Fetch the (key, manifest sha256) caches ``cache.entries`` found, manifests and files."""

    def deliver(self, record: JobRecord, caches: Sequence[SavedCache], lost: Callable[[], bool]) -> JobRecord | None:
        """Put what the attempt kept (its artifacts, reports, cache files, the manifests of the
        ``caches`` it pushes, its services' logs and its log) where the API serves it; returns the
        record to store, or None when the attempt is no longer this worker's (``lost()``, or the
        API says it ended): then nothing is recorded, as after a lost lease. The caches' keys are
        named by the caller, after this."""


class Transport(Protocol):
    name: str

    def claimed(self, session: Session, job: Job, worker_id: str, now: dt.datetime) -> JobFiles:
        """Called in the claim's transaction with the claimed job (a token is minted there, not
        in a transaction of its own)."""

    def close(self) -> None: ...


class LocalFiles:
    """The shared state dir: the files are where the API reads them already."""

    def fetch(self, sha256s: Sequence[str], cache: str | None = None) -> None:
        return None

    def fetch_caches(self, found: Sequence[tuple[str, str]]) -> None:
        return None

    def deliver(self, record: JobRecord, caches: Sequence[SavedCache], lost: Callable[[], bool]) -> JobRecord | None:
        return record


class LocalTransport:
    name = "local"
    _files = LocalFiles()

    def claimed(self, session: Session, job: Job, worker_id: str, now: dt.datetime) -> JobFiles:
        return self._files

    def close(self) -> None:
        return None


def make_transport(settings: Settings, artifact_store: Path) -> Transport:
    """The transport ``settings.artifact_transport`` names (``SANDPIT_ARTIFACT_TRANSPORT``: ``local``
    or ``http``, which uploads to ``settings.api_url``, ``SANDPIT_API_URL``); another word stops
    the worker at start-up with a message naming the variable."""
    name = settings.artifact_transport
    if name not in TRANSPORTS:
        raise ConfigError(f"SANDPIT_ARTIFACT_TRANSPORT must be local or http, not {name[:40]!r}")
    if name == "local":
        return LocalTransport()
    if not settings.api_url.startswith(("http://", "https://")):
        raise ConfigError(f"SANDPIT_API_URL must be an http:// or https:// URL, not {settings.api_url[:80]!r}")
    from pipelines.store.job_tokens import read_token_keys
    from worker.remote_files import HttpTransport

    try:
        keys = read_token_keys(settings.job_token_key_file) if settings.job_token_key_file else ()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return HttpTransport(settings.api_url, artifact_store, outbox_dir=settings.state_dir / "outbox", token_keys=keys)
