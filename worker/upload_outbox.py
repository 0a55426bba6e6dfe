"""The worker's outbox of deliveries the API has not taken yet (adapter): a local durable queue.

One JSON file per waiting attempt, ``<state>/outbox/<job>-<attempt>.json`` (0600 in a 0700
directory: it holds the attempt's token), written through a unique temporary, fsynced, and
renamed into place, so a crash leaves either the whole entry or none. It is written only when a
delivery's first try fails (the fast path writes nothing) and removed once the delivery ends.

While its worker lives, the delivery is retried by the job's own thread under the job's lease
(:meth:`worker.remote_files.HttpTransport.send_until_done`). When the worker process died with
entries waiting, the next one on the host (same state dir) takes them up at start
(:func:`take_over`, then :func:`replay`): it takes the attempt's lease over
(:func:`pipelines.store.handover.take_over_lease`) before its sweeper could settle it, delivers,
names the caches it pushed (their manifests were delivered with its files), records the stored
result, and publishes what that made ready — or drops the entry if the attempt was settled
meanwhile. A delivery the API refuses for good (422: a file that is not its name) is recorded
``error``/``infra_error`` without its files, and its caches are not named, as on the job's own
thread. The entry carries all of that (the record, the caches' keys, its logs'
local copies), so the new process needs nothing the dead one knew.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipelines.identifiers import is_job_id
from pipelines.store.db import session_scope
from pipelines.store.handover import take_over_lease
from pipelines.store.reads import read_run_row
from pipelines.store.transitions import finish_job
from worker import TYPE_CHECKING
from worker.cache import SavedCache, record_caches

if TYPE_CHECKING:
    from worker.executor import WorkerContext
    from worker.remote_files import HttpTransport

log = logging.getLogger("sandpit.worker")


@dataclass(frozen=True)
class LogCopy:
    """A log a delivery carries: the local file, its sha256, and the name the API keeps it under
    (``<job>.jsonl`` for the job's, ``<job>.svc<N>.jsonl`` for service N's)."""

    name: str
    path: str
    sha256: str

    def to_json(self) -> list[str]:
        return [self.name, self.path, self.sha256]


@dataclass(frozen=True)
class Delivery:
    """What one attempt sends (and, while the API is away, what waits in the outbox)."""

    job_id: str
    run_id: str
    attempt: int
    token: str
    worker_id: str
    blobs: tuple[str, ...]
    log_file: str | None  # the local log (absolute), None when the job wrote none
    log_sha256: str | None
    record: dict[str, object]  # the record to store once delivered (its logs already the API's)
    #: its services' logs, service N's as ``(N, copy)``
    service_logs: tuple[tuple[int, LogCopy], ...] = ()
    #: the caches it pushes, ``(key, manifest sha256, size)``: named in the database once delivered
    caches: tuple[tuple[str, str, int], ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"job_id": self.job_id, "run_id": self.run_id, "attempt": self.attempt, "token": self.token,
                "worker_id": self.worker_id, "blobs": list(self.blobs), "log_file": self.log_file,
                "log_sha256": self.log_sha256, "record": self.record,
                "service_logs": [[index, *copy.to_json()] for index, copy in self.service_logs],
                "caches": [list(c) for c in self.caches]}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Delivery:
        blobs_ = data.get("blobs")
        record = data.get("record")
        services = data.get("service_logs")
        caches = data.get("caches")
        return cls(job_id=str(data["job_id"]), run_id=str(data["run_id"]), attempt=int(str(data["attempt"])),
                   token=str(data["token"]), worker_id=str(data["worker_id"]),
                   blobs=tuple(str(b) for b in blobs_) if isinstance(blobs_, list) else (),
                   log_file=str(data["log_file"]) if data.get("log_file") else None,
                   log_sha256=str(data["log_sha256"]) if data.get("log_sha256") else None,
                   record=dict(record) if isinstance(record, dict) else {},
                   service_logs=tuple((int(i), LogCopy(str(n), str(p), str(h)))
                                      for i, n, p, h in (services if isinstance(services, list) else ())),
                   caches=tuple((str(k), str(h), int(z)) for k, h, z in (caches if isinstance(caches, list) else ())))


class UploadOutbox:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, job_id: str, attempt: int) -> Path:
        if not is_job_id(job_id):  # it names a file
            raise ValueError(f"job id {job_id[:80]!r} cannot name an outbox entry")
        return self.directory / f"{job_id}-{int(attempt)}.json"

    def put(self, delivery: Delivery) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = json.dumps(delivery.to_json()).encode()
        temp = self.directory / f".tmp-{secrets.token_hex(8)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, self._path(delivery.job_id, delivery.attempt))
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)

    def remove(self, delivery: Delivery) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(delivery.job_id, delivery.attempt))

    def waiting(self) -> list[Delivery]:
        """Every entry that reads as a delivery (one that does not is logged and left alone)."""
        found = []
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                with open(self.directory / name, "rb") as f:
                    found.append(Delivery.from_json(json.loads(f.read(64 * 1024 * 1024))))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("outbox entry %s cannot be read (%s); left as it is", name, exc)
        return found


def take_over(ctx: WorkerContext, transport: HttpTransport) -> list[Delivery]:
    """The deliveries a dead worker process of this host left whose attempts are still running,
    their leases now this process's (call it before the sweeper starts: a lease that expired
    while the worker was restarted is then taken over rather than settled as worker_lost)."""
    taken = []
    for delivery in transport.outbox.waiting():
        if delivery.worker_id == ctx.worker_id:
            continue  # this process's own, retried by its job's thread
        with session_scope(ctx.db) as s:
            ok = take_over_lease(s, delivery.job_id, delivery.attempt, delivery.worker_id, ctx.worker_id,
                                 ctx.now(), ctx.lease_s)
        if ok:
            taken.append(delivery)
        else:
            log.info("outbox: attempt %d of job %s was settled meanwhile; its delivery is dropped",
                     delivery.attempt, delivery.job_id)
            transport.outbox.remove(delivery)
    return taken


def replay(ctx: WorkerContext, transport: HttpTransport, taken: list[Delivery], publish: Callable[[list[str]], None],
           announce: Callable[[str, str, str], None]) -> int:
    """Deliver and record what :func:`take_over` took; how many results were recorded."""
    recorded = 0
    for delivery in taken:
        lease = ctx.leases.watch(ctx, delivery.job_id, delivery.attempt)
        try:
            outcome = transport.send_until_done(delivery, lease.lost.is_set)
        finally:
            ctx.leases.unwatch(lease)
        refused = outcome.startswith("refused: ")
        if not (outcome == "delivered" or refused) or lease.lost.is_set():
            log.warning("outbox: job %s was not delivered (%s)", delivery.job_id, outcome)
            continue
        record = delivery.record
        if refused:  # as the job's own thread records it: error/infra_error, and no cache named
            log.error("outbox: job %s: its files were refused by the API: %s", delivery.job_id, outcome)
            record = refused_record(record, outcome[len("refused: "):])
        elif delivery.caches:
            _name_caches(ctx, delivery)
        with session_scope(ctx.db) as s:
            newly = finish_job(s, delivery.job_id, delivery.attempt, record, ctx.now())
        publish(newly)
        announce(delivery.job_id, delivery.run_id, str(record.get("status")))
        recorded += 1
        log.info("outbox: job %s (attempt %d) delivered and recorded", delivery.job_id, delivery.attempt)
    return recorded


def refused_record(record: dict[str, object], why: str) -> dict[str, object]:
    """The record of an attempt whose delivery the API refused for good (a file the worker sent
    did not hash to its name): ``error``/``infra_error``, none of its files or logs named, as
    the job's own thread records it (worker/remote_files.py ``refused``, on its ``JobRecord``).

    >>> refused_record({"status": "succeeded", "artifacts": [{"path": "a"}], "log": "logs/j.jsonl",
    ...                 "tests": {"total": 1}}, "digest_mismatch")["status"]
    'error'
    """
    services = record.get("services")
    refused: dict[str, object] = {
        **{k: v for k, v in record.items() if k != "tests"}, "status": "error", "reason": "infra_error",
        "artifacts": [], "log": None,
        "message": f"sandpit could not deliver the job's files to the API ({why[:300]})"}
    if isinstance(services, list):
        refused["services"] = [{**s, "log": None} if isinstance(s, dict) else s for s in services]
    return refused


def _name_caches(ctx: WorkerContext, delivery: Delivery) -> None:
    """Point the delivered attempt's cache keys at its manifests, at its run's trust level, as the
    job's own thread does before its result is recorded; a cache that cannot be named is logged
    and costs nothing else (worker/executor.py ``_record_result``)."""
    saved = [SavedCache(key, sha256, size) for key, sha256, size in delivery.caches]
    try:
        with session_scope(ctx.db) as s:
            run = read_run_row(s, delivery.run_id)
            if run is not None:
                # the members come from the manifests in this worker's store (an entry carries none)
                record_caches(s, saved, run.trust, ctx.now(), store=ctx.engine.artifact_store)
    except Exception as exc:
        log.warning("outbox: job %s: its cache was not saved: %s", delivery.job_id, exc)
