"""A running job's files, moved by its worker when it shares no disk with the API (adapter).

A worker on another host (``SANDPIT_ARTIFACT_TRANSPORT=http``) uploads what a job kept — artifact
and report files, cache manifests and the files they list, the final log — and fetches what a job
starts with — its dependencies' artifacts, its caches. Every request carries the job's own token
(:mod:`pipelines.store.job_tokens`: minted at the claim and stored hashed, or signed with the key
the API and the workers share, ``SANDPIT_JOB_TOKEN_KEY_FILE``; good for that job while that
attempt runs). What it may do:

- upload any content under its sha256 (content-addressed: the bytes are hashed as they arrive
  and kept only if they hash to the name, so an upload can add a file but never change one);
- upload the job's final log, checked against ``X-Content-SHA256``, as ``<state>/logs/<job>.jsonl``
  (what the job's recorded ``log`` then names, relative to the API's state dir);
- upload the log of its service N, checked the same way, as ``<state>/logs/<job>.svc<N>.jsonl``
  (what its record's ``services[N].log`` then names);
- upload its small files and its logs together, in one request (a *bundle*: a JSON manifest line
  of ``[sha256, size]`` pairs, then their bytes), each checked as above;
- fetch a file a job of its own run kept (its dependencies' artifacts), a cache manifest of its
  own trust level, or a file such a manifest lists (``?cache=<manifest sha256>``: the manifest is
  read from the API's store and must list the file). A trusted run's files never reach an
  untrusted job's worker through a cache, nor the reverse.

Errors, each its own status and code: no or unknown token 401 ``unauthenticated``; a token of
another job 403 ``forbidden``; a token whose attempt has ended 409 ``job_not_running``; a body
that is not the named bytes 422 ``digest_mismatch``; over the cap 413 ``body_too_large``; a file
the job may not read, or that is not stored, 404.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from anyio import to_thread
from sqlalchemy.engine import Engine

from api.errors import ApiError, BadRequest, BodyTooLarge, Forbidden, NotAuthenticated, NotFound
from pipelines.files.digests import fd_intact
from pipelines.files.intake import FILE_MODE, DigestMismatch, Intake, IntakeTooLarge
from pipelines.files.temps import open_temp
from pipelines.identifiers import is_job_id, is_sha256_hex
from pipelines.store.job_tokens import Grant, cache_manifest_at, grant_for, looks_like_token, run_kept

log = logging.getLogger("sandpit.api")

#: the largest single upload: a job's artifacts are capped per file by the worker already; this
#: bounds what one request may write to the API's disk whatever the sender claims
MAX_UPLOAD_BYTES = 8 * 1024**3
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # as the worker's cache manifests (worker/cache.py)
FLUSH_BYTES = 1 << 20  # received bytes are written in pieces this large, off the event loop
MAX_BUNDLE_BYTES = 16 * 1024 * 1024  # a bundle is read whole: small files only (the worker sends big ones alone)
MAX_BUNDLE_FILES = 4096
MAX_SERVICES = 100  # a service's log is <job>.svc<N>.jsonl with N of one or two digits (worker/sandbox/services)


class JobNotRunning(ApiError):
    status_code = 409
    code = "job_not_running"


class DigestMismatchError(ApiError):
    status_code = 422
    code = "digest_mismatch"


async def grant(engine: Engine, token: str | None, job_id: str, keys: Sequence[bytes] = ()) -> Grant:
    """The grant of ``token`` for ``job_id`` (``keys``: what signed tokens are checked with), or
    the matching error."""
    return await to_thread.run_sync(checked_grant, engine, token, job_id, keys)


def checked_grant(engine: Engine, token: str | None, job_id: str, keys: Sequence[bytes] = ()) -> Grant:
    """:func:`grant`, on the caller's thread (one database read)."""
    if not token:
        raise NotAuthenticated("send `Authorization: Bearer <the job's token>`")
    if not looks_like_token(token):
        raise NotAuthenticated("the job token is not valid")
    found = grant_for(engine, token, job_id, keys)
    if found.refusal == "unknown":
        raise NotAuthenticated("the job token is not valid")
    if found.refusal == "other_job":
        raise Forbidden(f"this token belongs to another job, not to job {job_id}")
    if found.refusal == "not_running":
        raise JobNotRunning(f"attempt {found.attempt} of job {job_id} is no longer running: its token moves no files")
    return found


def checked_sha(sha256: str) -> str:
    if not is_sha256_hex(sha256):
        raise BadRequest(f"{sha256[:80]!r} is not a sha256 (64 lowercase hex digits)")
    return sha256


def _declared_size(content_length: str | None) -> None:
    if content_length and content_length.isdigit() and int(content_length) > MAX_UPLOAD_BYTES:
        raise BodyTooLarge(f"the body is {content_length} bytes; the limit is {MAX_UPLOAD_BYTES}")


async def _receive(intake: Intake, chunks: AsyncIterator[bytes]) -> None:
    pending = bytearray()
    try:
        async for chunk in chunks:
            pending += chunk
            if len(pending) >= FLUSH_BYTES:
                data, pending = bytes(pending), bytearray()
                await to_thread.run_sync(intake.write, data)
        if pending:
            intake.write(bytes(pending))
    except IntakeTooLarge:
        raise BodyTooLarge(f"the body is over the limit of {MAX_UPLOAD_BYTES} bytes") from None
    except BaseException:
        intake.abort()
        raise


async def receive_blob(store: Path, sha256: str, chunks: AsyncIterator[bytes], content_length: str | None) -> bool:
    """Store the body under ``sha256`` in ``store`` if it hashes to it; True when the file is new."""
    _declared_size(content_length)
    intake = await to_thread.run_sync(Intake, store, sha256, MAX_UPLOAD_BYTES)
    await _receive(intake, chunks)
    try:
        return await to_thread.run_sync(intake.commit_blob)
    except DigestMismatch as exc:
        raise DigestMismatchError(f"the body is not the file named {sha256}: {exc}") from None


def log_name(job_id: str, service: int | None = None) -> str:
    """The file name of a job's log, or of its service ``service``'s, in the logs dir (the
    worker's names, worker/sandbox/services/naming.py); a job id or index that could not name
    one is a bad request.

    >>> log_name("6885fcfd0ec5"), log_name("6885fcfd0ec5", 1)
    ('6885fcfd0ec5.jsonl', '6885fcfd0ec5.svc1.jsonl')
    """
    if not is_job_id(job_id):  # it becomes a file name
        raise BadRequest(f"job id {job_id[:80]!r} cannot name a log file")
    if service is None:
        return f"{job_id}.jsonl"
    if not 0 <= service < MAX_SERVICES:
        raise BadRequest(f"service {service} is not one a job can have (0 to {MAX_SERVICES - 1})")
    return f"{job_id}.svc{service}.jsonl"


async def receive_log(logs_dir: Path, job_id: str, sha256: str, chunks: AsyncIterator[bytes],
                      content_length: str | None, service: int | None = None) -> str:
    """Store the body as the job's log (or its service ``service``'s) if it hashes to
    ``sha256``; the path to record, relative to the state dir."""
    name = log_name(job_id, service)
    _declared_size(content_length)
    intake = await to_thread.run_sync(Intake, logs_dir, sha256, MAX_UPLOAD_BYTES)
    await _receive(intake, chunks)
    try:
        await to_thread.run_sync(intake.commit_as, name)
    except DigestMismatch as exc:
        raise DigestMismatchError(f"the body is not the log named {sha256}: {exc}") from None
    return f"logs/{name}"


def receive_bundle(engine: Engine, ahead: BundleTemporaries, token: str | None, job_id: str,
                   body: bytes, keys: Sequence[bytes] = ()) -> dict[str, object]:
    """A job's small files and its logs in one request (see :data:`BUNDLE_HELP`): the token is
    checked, then each file is hashed and kept under its name, its services' logs next, the job's
    log last. One request and one thread hand-off per job instead of one per file: the upload
    path's cost is round trips.

    Why the check comes first, on this thread, and not beside the writes: started on a thread of
    its own at the request's entry, overlapping the body's reading, hashing and writing, it made
    the bundle no faster here (bench/bench_workers.py --baseline-tree, in turns: 0.14 ms slower
    at load 3.7-5), the second thread's wake-up costing what the overlap saved; and first, a
    refused token costs the API no write at all."""
    checked_grant(engine, token, job_id, keys)
    head, sep, rest = body.partition(b"\n")
    if not sep or len(head) > MAX_MANIFEST_BYTES:
        raise BadRequest("a bundle starts with its manifest: one line of JSON, then the files' bytes")
    files, services, log_entry = _bundle_manifest(head)
    logs = [(log_name(job_id, index), sha, size) for index, sha, size in services]
    if log_entry is not None:
        logs.append((log_name(job_id), *log_entry))
    sizes = [size for _sha, size in files] + [size for _name, _sha, size in logs]
    if sum(sizes) != len(rest):
        raise BadRequest(f"the manifest names {len(sizes)} file(s) whose sizes do not add up to the "
                         f"{len(rest)} bytes that follow it")
    view = memoryview(rest)
    stored = kept = offset = 0
    for sha256, size in files:
        intake = Intake(ahead.store.directory, sha256, size, ahead.store.take())
        try:
            intake.write(view[offset:offset + size])
            new = intake.commit_blob()
        except DigestMismatch as exc:
            raise DigestMismatchError(f"the bundle's bytes for {sha256} are not that file: {exc}") from None
        stored, kept, offset = stored + new, kept + (not new), offset + size
    paths = []
    for name, sha256, size in logs:
        intake = Intake(ahead.logs.directory, sha256, size, ahead.logs.take())
        try:
            intake.write(view[offset:offset + size])
            intake.commit_as(name)
        except DigestMismatch as exc:
            raise DigestMismatchError(f"the bundle's log {name} is not the one named {sha256}: {exc}") from None
        paths.append(f"logs/{name}")
        offset += size
    return {"stored": stored, "kept": kept, "log": paths[-1] if log_entry is not None else None,
            "services": paths[:len(services)]}


class MadeAhead:
    """Unnamed temporaries made ahead in one directory (adapter), so that a bundle's files take
    one each instead of allocating an inode on the request's path: the ``O_TMPFILE`` open was
    the costliest call of a small file's intake here (0.15-0.17 ms of its 0.23 ms median, under
    ``perf trace`` on this ext4, and 0.5-1 ms when the disk is busy). The pool is refilled after
    the answer is sent (:meth:`BundleTemporaries.refill`). Only unnamed ones are kept: on a filesystem
    without ``O_TMPFILE`` a named temporary could outlive the process, so there none is made
    ahead. Those never used are closed when the API stops (:meth:`close`), or go with the process
    (they have no name)."""

    SIZE = 8

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ready: list[tuple[int, str | None]] = []
        self.lock = threading.Lock()
        self.named = False  # this filesystem has no O_TMPFILE: nothing is made ahead
        self.closed = False

    def take(self) -> tuple[int, str | None] | None:
        with self.lock:
            return self.ready.pop() if self.ready else None

    def refill(self) -> None:
        while not self.named:
            with self.lock:
                if self.closed or len(self.ready) >= self.SIZE:
                    return
            fd, name = open_temp(self.directory, FILE_MODE, dir_mode=0o700)
            if name is not None:
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
                self.named = True
                return
            with self.lock:
                if self.closed:
                    os.close(fd)
                    return
                self.ready.append((fd, None))

    def close(self) -> None:
        """Close the temporaries not taken (an API that stops in a process that goes on: the tests,
        an embedding) and make no more."""
        with self.lock:
            self.closed = True
            ready, self.ready = self.ready, []
        for fd, _name in ready:
            os.close(fd)


class BundleTemporaries:
    """What bundles take their files' temporaries from: a pool for the artifact store and one for
    the logs (made with the API's services, so one per process; refilled after each answer)."""

    def __init__(self, store: Path, logs_dir: Path) -> None:
        self.store = MadeAhead(store)
        self.logs = MadeAhead(logs_dir)

    def refill(self) -> None:
        """Make the temporaries the bundles took, after the answer went out (a failure here costs
        the next bundle only the inodes it then makes itself)."""
        for pool in (self.store, self.logs):
            try:
                pool.refill()
            except OSError as exc:
                log.warning("could not make temporaries ahead in %s: %s", pool.directory, exc.strerror)

    def close(self) -> None:
        self.store.close()
        self.logs.close()


BUNDLE_HELP = ("one line of JSON, {\"files\": [[sha256, size], ...], \"services\": [[index, sha256, size], ...] "
               "(optional: the services' logs), \"log\": [sha256, size] or null}, then the files' bytes in that "
               "order, then the services' logs', then the job's log's")


def _bundle_manifest(head: bytes) -> tuple[list[tuple[str, int]], list[tuple[int, str, int]], tuple[str, int] | None]:
    try:
        manifest = json.loads(head)
    except ValueError:
        raise BadRequest(f"the bundle's manifest is not JSON; a bundle is {BUNDLE_HELP}") from None
    entries = manifest.get("files") if isinstance(manifest, dict) else None
    services = manifest.get("services", []) if isinstance(manifest, dict) else None
    log_entry = manifest.get("log") if isinstance(manifest, dict) else None
    if not isinstance(entries, list) or len(entries) > MAX_BUNDLE_FILES:
        raise BadRequest(f"the bundle's manifest needs `files` (at most {MAX_BUNDLE_FILES}); a bundle is {BUNDLE_HELP}")
    if not isinstance(services, list) or len(services) > MAX_SERVICES:
        raise BadRequest(f"the bundle's `services` is a list of at most {MAX_SERVICES}; a bundle is {BUNDLE_HELP}")
    indexed = [_service_entry(e) for e in services]
    if len({index for index, _sha, _size in indexed}) != len(indexed):
        raise BadRequest("the bundle's `services` names a service twice")
    return [_entry(e) for e in entries], indexed, None if log_entry is None else _entry(log_entry)


def _service_entry(value: object) -> tuple[int, str, int]:
    if (isinstance(value, list) and len(value) == 3 and isinstance(value[0], int) and not isinstance(value[0], bool)
            and 0 <= value[0] < MAX_SERVICES):
        sha256, size = _entry(value[1:])
        return int(value[0]), sha256, size
    raise BadRequest(f"{str(value)[:120]!r} is not [service index, sha256, size]; a bundle is {BUNDLE_HELP}")


def _entry(value: object) -> tuple[str, int]:
    if (isinstance(value, list) and len(value) == 2 and is_sha256_hex(value[0]) and isinstance(value[1], int)
            and not isinstance(value[1], bool) and 0 <= value[1] <= MAX_BUNDLE_BYTES):
        return str(value[0]), int(value[1])
    raise BadRequest(f"{str(value)[:120]!r} is not [sha256, size]; a bundle is {BUNDLE_HELP}")


def readable_file(engine: Engine, store: Path, found: Grant, sha256: str, cache: str | None) -> Path:
    """Where the file ``sha256`` that the job of ``found`` may read lives (checked against its
    hash); 404 when it may not read it or it is not stored here."""
    allowed = run_kept(engine, found.run_id, sha256) or cache_manifest_at(engine, found.trust, sha256)
    if not allowed and cache is not None:
        if not is_sha256_hex(cache):
            raise BadRequest(f"cache {cache[:80]!r} is not a sha256 (64 lowercase hex digits)")
        allowed = cache_manifest_at(engine, found.trust, cache) and sha256 in _manifest_shas(store, cache)
    if not allowed:
        raise NotFound(f"job {found.job_id} has no file {sha256} to fetch (neither an artifact of its run nor "
                       "a cache of its trust level)")
    path = store / sha256[:2] / sha256
    if not _intact(path, sha256):
        raise NotFound(f"the file {sha256} is not stored here (never uploaded, expired, or damaged)")
    return path


def _intact(path: Path, sha256: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        if not fd_intact(fd, sha256):
            log.error("stored file %s does not match its sha256; not served", path)
            return False
        return True
    finally:
        os.close(fd)


def _manifest_shas(store: Path, manifest_sha: str) -> set[str]:
    path = store / manifest_sha[:2] / manifest_sha
    if not _intact(path, manifest_sha):
        return set()
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        items = json.loads(raw) if len(raw) <= MAX_MANIFEST_BYTES else []
    except (OSError, ValueError):
        return set()
    if not isinstance(items, list):
        return set()
    return {str(i["sha256"]) for i in items if isinstance(i, dict) and is_sha256_hex(i.get("sha256"))}
