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
records the stored result, and publishes what that made ready — or drops the entry if the attempt
was settled meanwhile. A replayed attempt's cache is not saved (a cache is an
optimisation; the next job with that key saves it again).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

from pipelines.identifiers import is_job_id
from pipelines.store.db import session_scope
from pipelines.store.handover import take_over_lease
from pipelines.store.transitions import finish_job
from worker import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.executor import WorkerContext
    from worker.remote_files import Delivery, HttpTransport
    from worker.service.context import ServiceContext

log = logging.getLogger("sandpit.worker")


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
        from worker.remote_files import Delivery

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
        if outcome != "delivered" or lease.lost.is_set():
            log.warning("outbox: job %s was not delivered (%s)", delivery.job_id, outcome)
            continue
        with session_scope(ctx.db) as s:
            newly = finish_job(s, delivery.job_id, delivery.attempt, delivery.record, ctx.now())
        publish(newly)
        announce(delivery.job_id, delivery.run_id, str(delivery.record.get("status")))
        recorded += 1
        log.info("outbox: job %s (attempt %d) delivered and recorded", delivery.job_id, delivery.attempt)
    return recorded


def start_replay(ctx: ServiceContext) -> None:
    """At a worker's start: take over what its host's outbox holds (now, before the sweeper could
    settle those attempts), then deliver and record it on a thread of its own."""
    from worker.remote_files import HttpTransport

    transport = ctx.files
    assert isinstance(transport, HttpTransport)
    work = ctx.worker_context()
    try:
        taken = take_over(work, transport)
    except Exception as exc:  # the entries stay; the next start tries again
        log.warning("taking up the outbox failed: %s", exc)
        return
    if not taken:
        return

    def announce(job_id: str, run_id: str, status: str) -> None:  # the live log's end, as on_done sends it
        from pipelines.names import run_events_channel
        from worker.logstream import RedisLog

        RedisLog(ctx.redis, job_id).end(status, announce=(run_events_channel(run_id), job_id))

    def run() -> None:
        try:
            replay(work, transport, taken, ctx.publish, announce)
        except Exception as exc:
            log.warning("replaying the outbox failed: %s", exc)

    threading.Thread(target=run, name="sandpit-outbox", daemon=True).start()
