"""The ``http`` transport: a worker that shares no disk with the API moves a job's files over HTTP
with the job's own token (adapter; the seam is :mod:`worker.job_files`).

- **Token.** Minted in the claim's transaction (:func:`pipelines.store.job_tokens.mint_job_token`),
  or signed with the shared key where ``SANDPIT_JOB_TOKEN_KEY_FILE`` names one (no statement),
  held in this process only (never in the job's environment), good for this job while this
  attempt runs.
- **Fetch** (before the job runs): each file the job starts with that the local store lacks —
  its dependencies' artifacts, its caches' manifests and files — is downloaded from
  ``GET /api/v1/jobs/{id}/blobs/{sha256}`` straight into the local content-addressed store,
  hashed as it arrives and kept only if it is the named file (:mod:`pipelines.files.intake`).
  Files already here (a job before it ran on this worker) cost no request.
- **Delivery** (after it ran, before its result is recorded, under its lease): the files it kept
  up to 1 MiB each, its services' logs and its log go in one ``PUT /api/v1/jobs/{id}/bundle`` (a
  manifest line of ``[sha256, size]``, then their bytes; more bundles past 8 MiB, the job's log in
  the last); a bigger file alone, streamed from the local store, with ``PUT
  /api/v1/jobs/{id}/blobs/{sha256}`` (a log over 8 MiB with ``PUT /api/v1/jobs/{id}/log``, a
  service's with ``PUT /api/v1/jobs/{id}/services/{n}/log``). The API hashes every file and
  refuses one that is not the named bytes. The record then names the logs as
  ``logs/<job>.jsonl`` and ``logs/<job>.svc<N>.jsonl``, the API's copies, and the local ones are
  removed. The caches it pushed travel as their manifests (and the files they list); their keys
  are named in the database by the caller once the delivery is done, or, after a restart, by
  the outbox's replay.
- **Retries.** A refused connection, a timeout or a 5xx/429 answer is retried with doubling
  back-off (0.2 s up to 10 s). If the first try of a delivery fails, the delivery is written to
  the worker's outbox first (:mod:`worker.upload_outbox`, under the state dir, fsynced) and then
  retried for as long as the attempt's lease is held: an API that is down delays the result,
  it does not lose it, and a worker restarted meanwhile takes the delivery up again. A token the
  API no longer accepts (401/403/409: the attempt was settled elsewhere) ends the delivery;
  nothing is recorded, as when a lease is lost. A body the API calls damaged (422: the local copy
  does not hash to its name) makes the job ``error``/``infra_error`` without its artifacts, and
  the caches it pushed are not named (the caller names caches only for a succeeded or failed
  record: worker/executor.py ``CACHED_STATUSES``), so no job is pointed at files the API lacks.

Why bundles: the cost of the upload path is its round trips, not its bytes. One request per file
and one for the log cost two to three requests per job; a bundle makes it one, with one token check
and one thread hand-off on the API side (bench/bench_workers.py measures it). The requests
themselves are :mod:`worker.file_requests`'s.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session

from pipelines.identifiers import is_sha256_hex
from pipelines.job_record import JobRecord, Reason, Status
from pipelines.record import replace
from pipelines.store.job_tokens import mint_job_token, sign_job_token
from pipelines.store.models import Job
from worker.cache import SavedCache
from worker.errors import SandboxError
from worker.file_requests import BUNDLE_TYPE, AttemptOver, FileRequests, Refused, Transient
from worker.sandbox import blobs
from worker.sandbox.services.naming import log_name
from worker.upload_outbox import Delivery, LogCopy, UploadOutbox

log = logging.getLogger("sandpit.worker")

BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0)  # then 10 s between tries
FETCH_GIVE_UP_S = 60.0  # a fetch before the job runs gives up after this long (the job ends infra_error)
SMALL_BYTES = 1 << 20  # files up to this size travel in a bundle; bigger ones alone, streamed
BUNDLE_BYTES = 8 * 1024 * 1024  # under the API's cap of 16 MiB (api/job_files.py)


def backoff() -> Iterator[float]:
    """The waits between tries: doubling, then every 10 s.

    >>> import itertools; list(itertools.islice(backoff(), 9))
    [0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    """
    yield from BACKOFF_S
    while True:
        yield BACKOFF_S[-1]


@dataclass(frozen=True, slots=True)
class Piece:
    """One file of a delivery as it travels: a kept file (``kind`` ``file``), service ``index``'s
    log (``service``) or the job's log (``log``)."""

    kind: str
    sha256: str
    size: int
    path: str
    index: int = -1


def plan_requests(pieces: Sequence[Piece], small: int = SMALL_BYTES,
                  bundle: int = BUNDLE_BYTES) -> list[Piece | list[Piece]]:
    """The requests that carry ``pieces``, in order: a kept file over ``small`` or a log over
    ``bundle`` alone (a :class:`Piece`), the rest in bundles of at most ``bundle`` bytes (lists);
    the job's log travels last, in the last bundle when it fits.

    >>> plan = plan_requests([Piece("file", "a", 5, "p"), Piece("file", "b", 50, "p"), Piece("log", "c", 3, "p")],
    ...                      small=10, bundle=20)
    >>> [[q.sha256 for q in p] if isinstance(p, list) else p.sha256 for p in plan]
    ['b', ['a', 'c']]
    """
    alone = [p for p in pieces if p.size > (small if p.kind == "file" else bundle)]
    bundles: list[list[Piece]] = [[]]
    room = bundle
    for piece in sorted((p for p in pieces if p not in alone), key=lambda p: p.kind == "log"):
        if piece.size > room and bundles[-1]:
            bundles.append([])
            room = bundle
        bundles[-1].append(piece)
        room -= piece.size
    last_log = [p for p in alone if p.kind == "log"]
    first: list[Piece | list[Piece]] = [p for p in alone if p.kind != "log"]
    return first + [b for b in bundles if b] + list(last_log)


class HttpTransport:
    """One per worker process: the API's connection pool (keep-alive, shared by the job threads)
    and the outbox."""

    name = "http"

    def __init__(self, api_url: str, store: Path, outbox_dir: Path,
                 sleep: Callable[[float], None] = time.sleep, token_keys: Sequence[bytes] = ()) -> None:
        self.api_url = api_url.rstrip("/")
        self.token_keys = tuple(token_keys)
        self.store = store
        self.outbox = UploadOutbox(outbox_dir)
        self.sleep = sleep
        self.requests = FileRequests(self.api_url)

    def claimed(self, session: Session, job: Job, worker_id: str, now: dt.datetime) -> HttpFiles:
        if self.token_keys:  # signed: no statement in the claim's transaction
            token = sign_job_token(self.token_keys[0], job.id, job.attempt)
        else:
            token = mint_job_token(session, job.id, job.attempt, worker_id, now)
        return HttpFiles(self, job.id, job.run_id, job.attempt, token, worker_id)

    def close(self) -> None:
        self.requests.close()

    def download(self, job_id: str, token: str, sha256: str, cache: str | None) -> bool:
        """Fetch ``sha256`` into the local store; False when the API has no such file for this job."""
        return self.requests.download(job_id, token, sha256, cache, self.store)

    # -- delivery -----------------------------------------------------------------------
    def pieces(self, delivery: Delivery) -> list[Piece]:
        """What ``delivery`` sends, each with its size now (a kept file missing from the local
        store, or a log gone, is refused: the delivery cannot be made whole)."""
        found = []
        try:
            for sha256 in delivery.blobs:
                path = blobs.blob_path(self.store, sha256)
                found.append(Piece("file", sha256, path.stat().st_size, str(path)))
            for index, copy in delivery.service_logs:
                found.append(Piece("service", copy.sha256, os.path.getsize(copy.path), copy.path, index))
            if delivery.log_file is not None and delivery.log_sha256 is not None:
                found.append(Piece("log", delivery.log_sha256, os.path.getsize(delivery.log_file),
                                   delivery.log_file))
        except FileNotFoundError as exc:
            raise Refused(f"a file of the delivery is missing here: {exc.filename}") from None
        return found

    def send(self, delivery: Delivery) -> None:
        """Every file of ``delivery`` and its logs (:func:`plan_requests`: one request for a
        typical job); each answer judged."""
        for request in plan_requests(self.pieces(delivery)):
            if isinstance(request, list):
                self._bundle(delivery, request)
            else:
                self._alone(delivery, request)

    def _bundle(self, delivery: Delivery, pieces: Sequence[Piece]) -> None:
        parts = []
        try:
            for piece in pieces:
                with open(piece.path, "rb") as f:
                    parts.append(f.read())
        except FileNotFoundError as exc:
            raise Refused(f"a file of the delivery is missing here: {exc.filename}") from None
        manifest = {"files": [[p.sha256, len(b)] for p, b in zip(pieces, parts, strict=True) if p.kind == "file"],
                    "services": [[p.index, p.sha256, len(b)] for p, b in zip(pieces, parts, strict=True)
                                 if p.kind == "service"],
                    "log": next(([p.sha256, len(b)] for p, b in zip(pieces, parts, strict=True) if p.kind == "log"),
                                None)}
        # the manifest's order is the bytes' order: files, then services' logs, then the job's log
        order = {"file": 0, "service": 1, "log": 2}
        ordered = [b for _p, b in sorted(zip(pieces, parts, strict=True), key=lambda pb: order[pb[0].kind])]
        self.requests.put(f"/api/v1/jobs/{delivery.job_id}/bundle", delivery.token,
                          b"".join([json.dumps(manifest).encode(), b"\n", *ordered]),
                          f"uploading {len(pieces)} file(s)", headers={"Content-Type": BUNDLE_TYPE})

    def _alone(self, delivery: Delivery, piece: Piece) -> None:
        route = {"file": f"blobs/{piece.sha256}", "log": "log", "service": f"services/{piece.index}/log"}[piece.kind]
        headers = {} if piece.kind == "file" else {"X-Content-SHA256": piece.sha256}
        try:
            with open(piece.path, "rb") as f:
                self.requests.put(f"/api/v1/jobs/{delivery.job_id}/{route}", delivery.token, f,
                                  f"uploading {route}", size=os.fstat(f.fileno()).st_size, headers=headers)
        except FileNotFoundError:
            raise Refused(f"a file of the delivery is missing here: {piece.path}") from None

    def delivered(self, delivery: Delivery) -> None:
        """The API has the logs: the local copies go (nobody reads a worker's logs but its API)."""
        for path in (delivery.log_file, *(copy.path for _i, copy in delivery.service_logs)):
            if path:
                _remove_quietly(path)

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

    def deliver(self, record: JobRecord, caches: Sequence[SavedCache], lost: Callable[[], bool]) -> JobRecord | None:
        kept = [a.sha256 for a in (*record.artifacts, *record.report_files, *record.cache_files)]
        shas = tuple(dict.fromkeys(s for s in (*kept, *(c.sha256 for c in caches)) if is_sha256_hex(s)))
        log_file = record.log_path if record.log_path and os.path.isfile(record.log_path) else None
        service_logs, services = [], []
        for index, service in enumerate(record.services):
            local = service.log_path
            if local is not None and _is_service_log(local, record.log_path, index):
                name = log_name(self.job_id, index)  # the API's name: the job's id, not its sandbox's
                service_logs.append((index, LogCopy(name, local, _file_sha256(local))))
                service = replace(service, log_path=f"logs/{name}")
            services.append(service)
        stored = replace(record, log_path=f"logs/{self.job_id}.jsonl" if log_file else None, services=tuple(services))
        delivery = Delivery(job_id=self.job_id, run_id=self.run_id, attempt=self.attempt, token=self.token,
                            worker_id=self.worker_id, blobs=shas, log_file=log_file,
                            log_sha256=_file_sha256(log_file) if log_file else None, record=stored.to_json(),
                            service_logs=tuple(service_logs),
                            caches=tuple((c.key, c.sha256, c.size) for c in caches))
        outcome = self.transport.send_until_done(delivery, lost)
        if outcome == "delivered":
            return stored
        if outcome in ("lost", "over"):
            return None
        log.error("job %s: its files were refused by the API: %s", self.job_id, outcome)
        return refused(record, outcome[len("refused: "):])


def refused(record: JobRecord, why: str) -> JobRecord:
    """The record of an attempt whose delivery the API refused for good: ``error``/``infra_error``,
    none of its files or logs named (its services' neither: they were not delivered), as the outbox
    records a refused replay (worker/upload_outbox.py ``refused_record``, the same fields from the
    stored JSON)."""
    return replace(record, status=Status.ERROR, reason=Reason.INFRA_ERROR, artifacts=(), report_files=(),
                   cache_files=(), tests=None, log_path=None,
                   services=tuple(replace(s, log_path=None) for s in record.services),
                   message=f"sandpit could not deliver the job's files to the API ({why[:300]})")


def _is_service_log(path: str, job_log: str | None, index: int) -> bool:
    """Whether ``path`` is service ``index``'s log beside the job's log ``job_log`` (the engine
    names both after the job's sandbox: worker/sandbox/services/naming.py), and is there.

    >>> _is_service_log("/l/e0d3.svc1.jsonl", "/l/e0d3.jsonl", 1), _is_service_log("/etc/x", "/l/e0d3.jsonl", 1)
    (False, False)
    """
    if not job_log or not job_log.endswith(".jsonl"):
        return False
    parent, stem = os.path.split(job_log[:-len(".jsonl")])
    return path == os.path.join(parent, log_name(stem, index)) and os.path.isfile(path)


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
