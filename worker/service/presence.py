"""A worker's announcement and heartbeat in the database (adapter): who it is, what it can run.

When a worker starts it writes its row (:func:`pipelines.store.workers.register_worker`): host,
memory and CPU budget, concurrency, the runtimes that work here, the images in its store, the
sandpit version, and how its files reach the API (``local`` or ``http``). Then a thread of its own
beats every ``SANDPIT_HEARTBEAT_S`` (default 10 s): one ``UPDATE`` of its row, the image list
again when it changed (looked at every :data:`IMAGES_EVERY` beats: listing the store reads a few
directories), and the tokens of its attempts that ended are pruned. At a clean stop the row is
marked ``stopped``.

The heartbeat is for people (``sandpit workers``, ``GET /api/v1/workers``) and for a future
scheduler that prefers a worker holding a job's image; it never decides a job's fate. A worker
that is SIGKILLed stops beating and is shown ``gone`` after three beats, while its jobs are
settled by the lease expiry (``SANDPIT_LEASE_S``), exactly as before this table existed. A
database hiccup skips a beat (logged), it never stops the worker.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine as DbEngine

from pipelines.store.db import session_scope
from pipelines.store.job_tokens import prune_job_tokens
from pipelines.store.workers import WorkerInfo, beat, register_worker, stop_worker
from worker import TYPE_CHECKING
from worker.sandbox.runtime import PREFERENCE, runtime_problem

if TYPE_CHECKING:
    from worker.service.context import ServiceContext

log = logging.getLogger("sandpit.worker")

DEFAULT_HEARTBEAT_S = 10.0
IMAGES_EVERY = 6  # beats between two looks at the image store


def sandpit_version() -> str:
    """The installed sandpit's version (``unknown`` when run from a tree that is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sandpit")
    except PackageNotFoundError:
        return "unknown"


def working_runtimes() -> tuple[str, ...]:
    """The OCI runtimes that can run jobs on this host, in sandpit's order of preference."""
    return tuple(name for name in PREFERENCE if runtime_problem(name) is None)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Presence:
    """The heartbeat thread of one worker process (``start`` once, ``stop`` at shutdown)."""

    db: DbEngine
    worker_id: str
    memory_bytes: int
    cpus: float
    concurrency: int
    transport: str
    list_images: Callable[[], tuple[tuple[str, str], ...]]
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    host: str = field(default_factory=socket.gethostname)
    now: Callable[[], dt.datetime] = utcnow
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _images: tuple[tuple[str, str], ...] = ()
    _started_at: dt.datetime | None = None

    def info(self) -> WorkerInfo:
        assert self._started_at is not None
        return WorkerInfo(id=self.worker_id, host=self.host, version=sandpit_version(),
                          memory_bytes=self.memory_bytes, cpus=self.cpus, concurrency=self.concurrency,
                          runtimes=working_runtimes(), images=self._images, transport=self.transport,
                          heartbeat_s=self.heartbeat_s, started_at=self._started_at)

    def start(self) -> None:
        """Announce this worker (a failure is logged: the next beat registers it) and start beating."""
        self._started_at = self.now()
        self._images = self._current_images()
        self._register()
        self._thread = threading.Thread(target=self._loop, name="sandpit-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            with session_scope(self.db) as s:
                stop_worker(s, self.worker_id, self.now())
        except Exception as exc:  # it will be shown gone instead of stopped
            log.warning("could not mark worker %s stopped: %s", self.worker_id, exc)

    def beat_once(self, beats: int = 0) -> None:
        images = None
        if beats % IMAGES_EVERY == 0:
            current = self._current_images()
            if current != self._images:
                self._images = images = current
        with session_scope(self.db) as s:
            known = beat(s, self.worker_id, self.now(), images)
            prune_job_tokens(s)
        if not known:  # its row was dropped (or it was marked stopped by a namesake): announce again
            self._register()

    def _register(self) -> None:
        try:
            with session_scope(self.db) as s:
                register_worker(s, self.info(), self.now())
        except Exception as exc:
            log.warning("could not register worker %s: %s", self.worker_id, exc)

    def _current_images(self) -> tuple[tuple[str, str], ...]:
        try:
            return tuple(sorted(set(self.list_images())))
        except Exception as exc:  # a damaged store is the doctor's business; the beat goes on
            log.warning("could not list the images of worker %s: %s", self.worker_id, exc)
            return self._images

    def _loop(self) -> None:
        beats = 0
        while not self._stop.wait(self.heartbeat_s):
            beats += 1
            try:
                self.beat_once(beats)
            except Exception as exc:
                log.warning("heartbeat of worker %s failed: %s", self.worker_id, exc)


def store_images(engine: object) -> Callable[[], tuple[tuple[str, str], ...]]:
    """(name, digest) of every image in a sandbox engine's store: recipes built here (the digest
    is the recipe's layer key) and pulled or imported references (their manifest digest)."""

    def listed() -> tuple[tuple[str, str], ...]:
        images = engine.images  # type: ignore[attr-defined]
        found = [(image.name, f"recipe:{image.key}") for image in images.list()]
        found += [(reference, digest) for reference, digest, _size, _used, _source in images.pulled_entries()]
        return tuple(found)

    return listed


def start_presence(ctx: ServiceContext, concurrency: int | None) -> Presence:
    """Announce the worker of ``ctx`` and start its heartbeat (every ``settings.heartbeat_s``)."""
    presence = Presence(db=ctx.db, worker_id=ctx.worker_id, memory_bytes=ctx.budget.memory_bytes,
                        cpus=ctx.budget.cpus, concurrency=concurrency or 0,
                        transport=ctx.settings.artifact_transport,
                        list_images=store_images(ctx.engine), heartbeat_s=ctx.settings.heartbeat_s)
    presence.start()
    return presence
