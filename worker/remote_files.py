"""The ``http`` transport: a worker that shares no disk with the API moves a job's files over HTTP
with the job's own token (adapter; the seam is :mod:`worker.job_files`).

- **Token.** Minted in the claim's transaction (:func:`pipelines.store.job_tokens.mint_job_token`),
  held in this process only (never in the job's environment), good for this job while this
  attempt runs.
- **Fetch** (before the job runs): each file the job starts with that the local store lacks —
  its dependencies' artifacts, its caches' manifests and files — is downloaded from
  ``GET /api/v1/jobs/{id}/blobs/{sha256}`` straight into the local content-addressed store,
  hashed as it arrives and kept only if it is the named file (:mod:`pipelines.files.intake`).
  Files already here (a job before it ran on this worker) cost no request.
- **Delivery** (after it ran, before its result is recorded, under its lease): the files it kept
  up to 1 MiB each and its log go in one ``PUT /api/v1/jobs/{id}/bundle`` (a manifest line of
  ``[sha256, size]``, then their bytes; more bundles past 8 MiB); a bigger file alone, streamed
  from the local store, with ``PUT /api/v1/jobs/{id}/blobs/{sha256}`` (a log over 8 MiB with
  ``PUT /api/v1/jobs/{id}/log``). The API hashes every file and refuses one that is not the named
  bytes. The record then names the log as ``logs/<job>.jsonl``, the API's copy, and the local log
  is removed.
- **Retries.** A refused connection, a timeout or a 5xx/429 answer is retried with doubling
  back-off (0.2 s up to 10 s). If the first try of a delivery fails, the delivery is written to
  the worker's outbox first (:mod:`worker.upload_outbox`, under the state dir, fsynced) and then
  retried for as long as the attempt's lease is held: an API that is down delays the result,
  it does not lose it, and a worker restarted meanwhile takes the delivery up again. A token the
  API no longer accepts (401/403/409: the attempt was settled elsewhere) ends the delivery;
  nothing is recorded, as when a lease is lost. A body the API calls damaged (422: the local copy
  does not hash to its name) makes the job ``error``/``infra_error`` without its artifacts.

Why bundles: the cost of the upload path is its round trips, not its bytes. One request per file
and one for the log cost two to three requests per job; a bundle makes it one, with one token check
and one thread hand-off on the API side (bench/bench_workers.py measures it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
from sqlmodel import Session

from pipelines.files.intake import DigestMismatch, Intake, IntakeError
from pipelines.identifiers import is_sha256_hex
from pipelines.job_record import JobRecord, Reason, Status
from pipelines.record import replace
from pipelines.store.job_tokens import mint_job_token
from pipelines.store.models import Job
from worker.errors import SandboxError
from worker.sandbox import blobs
from worker.upload_outbox import Delivery, UploadOutbox

log = logging.getLogger("sandpit.worker")

BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0)  # then 10 s between tries
FETCH_GIVE_UP_S = 60.0  # a fetch before the job runs gives up after this long (the job ends infra_error)
SMALL_BYTES = 1 << 20  # files up to this size travel in a bundle; bigger ones alone, streamed
BUNDLE_BYTES = 8 * 1024 * 1024  # under the API's cap of 16 MiB (api/job_files.py)
BUNDLE_TYPE = "application/x-sandpit-bundle"
MAX_FETCH_BYTES = 8 * 1024**3
TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class Transient(Exception):
    """The API could not be reached or answered 5xx/429: try again later."""


class AttemptOver(Exception):
    """The API refuses the token (401/403/409): this attempt no longer runs."""


class Refused(Exception):
    """The API refused a request for good (a damaged local file, a bad request)."""


def backoff() -> Iterator[float]:
    """The waits between tries: doubling, then every 10 s.

    >>> import itertools; list(itertools.islice(backoff(), 9))
    [0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    """
    yield from BACKOFF_S
    while True:
        yield BACKOFF_S[-1]


def _judge(response: httpx.Response, what: str) -> None:
    if response.status_code < 300:
        return
    if response.status_code >= 500 or response.status_code == 429:
        raise Transient(f"{what}: the API answered {response.status_code}")
    try:
        body = response.json()
        detail = f"{body.get('error')}: {body.get('message')}"
    except ValueError:
        detail = response.text[:200]
    if response.status_code in (401, 403, 409):
        raise AttemptOver(f"{what}: {detail}")
    raise Refused(f"{what}: the API refused it ({response.status_code} {detail})")


class HttpTransport:
    """One per worker process: the HTTP client (keep-alive, thread-safe) and the outbox."""

    name = "http"

    def __init__(self, api_url: str, store: Path, outbox_dir: Path,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.api_url = api_url.rstrip("/")
        self.store = store
        self.outbox = UploadOutbox(outbox_dir)
        self.sleep = sleep
        self.http = httpx.Client(base_url=self.api_url, timeout=TIMEOUT,
                                 limits=httpx.Limits(max_keepalive_connections=16, keepalive_expiry=30))

    def claimed(self, session: Session, job: Job, worker_id: str, now: dt.datetime) -> HttpFiles:
        token = mint_job_token(session, job.id, job.attempt, worker_id, now)
        return HttpFiles(self, job.id, job.run_id, job.attempt, token, worker_id)

    def close(self) -> None:
        self.http.close()

    # -- the requests -------------------------------------------------------------------
    def _auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def download(self, job_id: str, token: str, sha256: str, cache: str | None) -> bool:
        """Fetch ``sha256`` into the local store; False when the API has no such file for this job."""
        params = {"cache": cache} if cache else None
        try:
            with self.http.stream("GET", f"/api/v1/jobs/{job_id}/blobs/{sha256}", params=params,
                                  headers=self._auth(token)) as response:
                if response.status_code == 404:
                    return False
                _judge(response, f"fetching {sha256[:12]}")
                with Intake(self.store, sha256, MAX_FETCH_BYTES) as intake:
                    for chunk in response.iter_bytes(1 << 20):
                        intake.write(chunk)
                    intake.commit_blob()
            return True
        except httpx.TransportError as exc:
            raise Transient(f"fetching {sha256[:12]}: {exc}") from exc
        except DigestMismatch as exc:
            raise Refused(f"the API sent other bytes than {sha256}: {exc}") from exc
        except IntakeError as exc:
            raise Refused(f"fetching {sha256[:12]}: {exc}") from exc

    def upload_blob(self, delivery: Delivery, sha256: str) -> None:
        path = blobs.blob_path(self.store, sha256)
        url = f"/api/v1/jobs/{delivery.job_id}/blobs/{sha256}"
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                content: bytes | object = f.read() if size <= SMALL_BYTES else f
                response = self.http.put(url, content=content, headers=self._auth(delivery.token))  # type: ignore[arg-type]
        except FileNotFoundError:
            raise Refused(f"the kept file {sha256} is missing from the local store") from None
        except httpx.TransportError as exc:
            raise Transient(f"uploading {sha256[:12]}: {exc}") from exc
        _judge(response, f"uploading {sha256[:12]}")

    def upload_log(self, delivery: Delivery) -> None:
        assert delivery.log_file is not None and delivery.log_sha256 is not None
        headers = {**self._auth(delivery.token), "X-Content-SHA256": delivery.log_sha256}
        try:
            with open(delivery.log_file, "rb") as f:
                response = self.http.put(f"/api/v1/jobs/{delivery.job_id}/log", content=f, headers=headers)
        except FileNotFoundError:
            raise Refused(f"the job's log {delivery.log_file} is missing") from None
        except httpx.TransportError as exc:
            raise Transient(f"uploading the log: {exc}") from exc
        _judge(response, "uploading the log")

    def upload_bundle(self, delivery: Delivery, sha256s: Sequence[str], with_log: bool) -> None:
        """Small files (and the log) in one request: a manifest line, then their bytes."""
        parts = []
        try:
            for sha256 in sha256s:
                parts.append(blobs.blob_path(self.store, sha256).read_bytes())
            log_bytes = b""
            if with_log:
                assert delivery.log_file is not None
                log_bytes = Path(delivery.log_file).read_bytes()
        except FileNotFoundError as exc:
            raise Refused(f"a kept file is missing from the local store: {exc.filename}") from None
        manifest = {"files": [[sha, len(data)] for sha, data in zip(sha256s, parts, strict=True)],
                    "log": [delivery.log_sha256, len(log_bytes)] if with_log else None}
        body = b"".join([json.dumps(manifest).encode(), b"\n", *parts, log_bytes])
        try:
            response = self.http.put(f"/api/v1/jobs/{delivery.job_id}/bundle", content=body,
                                     headers={**self._auth(delivery.token), "Content-Type": BUNDLE_TYPE})
        except httpx.TransportError as exc:
            raise Transient(f"uploading {len(sha256s)} file(s): {exc}") from exc
        _judge(response, f"uploading {len(sha256s)} file(s)")

    def send(self, delivery: Delivery) -> None:
        """Every file of ``delivery`` and its log: big files alone (streamed), the small ones and a
        small log in bundles of at most BUNDLE_BYTES (one request for a typical job); each answer
        judged."""
        small: list[list[str]] = [[]]
        room = BUNDLE_BYTES
        for sha256 in delivery.blobs:
            try:
                size = blobs.blob_path(self.store, sha256).stat().st_size
            except FileNotFoundError:
                raise Refused(f"the kept file {sha256} is missing from the local store") from None
            if size > SMALL_BYTES:
                self.upload_blob(delivery, sha256)
                continue
            if size > room:
                small.append([])
                room = BUNDLE_BYTES
            small[-1].append(sha256)
            room -= size
        log_size = os.path.getsize(delivery.log_file) if delivery.log_file else None
        log_bundled = log_size is not None and log_size <= BUNDLE_BYTES
        if log_bundled and log_size is not None and log_size > room:
            small.append([])
        for i, batch in enumerate(small):
            last = i == len(small) - 1
            if batch or (last and log_bundled):
                self.upload_bundle(delivery, batch, with_log=last and log_bundled)
        if delivery.log_file is not None and not log_bundled:
            self.upload_log(delivery)

    def delivered(self, delivery: Delivery) -> None:
        """The API has the log: the local copy goes (nobody reads a worker's logs but its API)."""
        if delivery.log_file:
            _remove_quietly(delivery.log_file)

    def send_until_done(self, delivery: Delivery, lost: Callable[[], bool]) -> str:
        """Send, and while the API is away keep the delivery in the outbox and try again until it
        is done or the lease is lost: ``delivered``, ``lost`` (give up: nothing is recorded),
        ``over`` (the API says the attempt ended) or ``refused: <why>``."""
        try:
            self.send(delivery)
            self.delivered(delivery)
            return "delivered"
        except Transient as exc:
            log.warning("job %s: delivering its files failed (%s); kept in the outbox and retried", delivery.job_id,
                        exc)
            self.outbox.put(delivery)
        except AttemptOver as exc:
            log.warning("job %s: the API no longer takes its files (%s)", delivery.job_id, exc)
            return "over"
        except Refused as exc:
            return f"refused: {exc}"
        try:
            for wait in backoff():
                if lost():
                    return "lost"
                self.sleep(wait)
                try:
                    self.send(delivery)
                    log.info("job %s: its files reached the API", delivery.job_id)
                    self.delivered(delivery)
                    return "delivered"
                except Transient as exc:
                    log.warning("job %s: delivery still failing (%s); next try in ≤ %.0fs", delivery.job_id, exc,
                                BACKOFF_S[-1])
                except AttemptOver as exc:
                    log.warning("job %s: the API no longer takes its files (%s)", delivery.job_id, exc)
                    return "over"
                except Refused as exc:
                    return f"refused: {exc}"
            return "lost"  # not reached: backoff() never ends
        finally:
            self.outbox.remove(delivery)


class HttpFiles:
    """One claimed attempt's traffic over :class:`HttpTransport`."""

    def __init__(self, transport: HttpTransport, job_id: str, run_id: str, attempt: int, token: str,
                 worker_id: str) -> None:
        self.transport, self.job_id, self.run_id, self.attempt = transport, job_id, run_id, attempt
        self.token, self.worker_id = token, worker_id

    def fetch(self, sha256s: Sequence[str], cache: str | None = None) -> None:
        store = self.transport.store
        for sha256 in dict.fromkeys(sha256s):
            if not is_sha256_hex(sha256) or blobs.intact(blobs.blob_path(store, sha256), sha256):
                continue
            self._fetch_one(sha256, cache)

    def _fetch_one(self, sha256: str, cache: str | None) -> None:
        deadline = time.monotonic() + FETCH_GIVE_UP_S
        for wait in backoff():
            try:
                if not self.transport.download(self.job_id, self.token, sha256, cache):
                    log.warning("job %s: the API has no file %s for it", self.job_id, sha256)
                return
            except Transient as exc:
                if time.monotonic() + wait > deadline:
                    raise SandboxError(f"the API at {self.transport.api_url} could not be reached to fetch the "
                                       f"job's input {sha256[:12]} ({exc})") from None
                self.transport.sleep(wait)
            except (AttemptOver, Refused) as exc:
                raise SandboxError(f"fetching the job's input {sha256[:12]} from the API failed: {exc}") from None

    def fetch_caches(self, found: Sequence[tuple[str, str]]) -> None:
        from worker.cache import manifest_items

        for _key, manifest in found:
            self.fetch([manifest])
            listed = [str(i.get("sha256")) for i in manifest_items(self.transport.store, manifest)]
            self.fetch(listed, cache=manifest)

    def deliver(self, record: JobRecord, extra: Sequence[str], lost: Callable[[], bool]) -> JobRecord | None:
        kept = [a.sha256 for a in (*record.artifacts, *record.report_files, *record.cache_files)]
        shas = tuple(dict.fromkeys(s for s in (*kept, *extra) if is_sha256_hex(s)))
        log_file = record.log_path if record.log_path and os.path.isfile(record.log_path) else None
        stored = replace(record, log_path=f"logs/{self.job_id}.jsonl" if log_file else None)
        delivery = Delivery(job_id=self.job_id, run_id=self.run_id, attempt=self.attempt, token=self.token,
                            worker_id=self.worker_id, blobs=shas, log_file=log_file,
                            log_sha256=_file_sha256(log_file) if log_file else None, record=stored.to_json())
        outcome = self.transport.send_until_done(delivery, lost)
        if outcome == "delivered":
            return stored
        if outcome in ("lost", "over"):
            return None
        log.error("job %s: its files were refused by the API: %s", self.job_id, outcome)
        return replace(stored, status=Status.ERROR, reason=Reason.INFRA_ERROR, artifacts=(), report_files=(),
                       cache_files=(), tests=None, log_path=None,
                       message=f"sandpit could not deliver the job's files to the API ({outcome[9:][:300]})")


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        log.warning("could not remove the delivered log %s: %s", path, exc.strerror)
