"""The worker's long-lived context: sandbox engine, database, Redis, publisher, admission, sweeper.

Built once when a worker starts (``start_service``, called by the Celery app's ``worker_init``), from
the process's one :class:`~worker.settings.Settings` (database, Redis, lease and sweep periods, the
engine's settings) and the job publisher it is given (``send``: the Celery app's ``send_task``, so
this module never imports the app). The context belongs to the app object that started it, not to
this module: a second app in one process has a context of its own.

Admission: a job runs only once its memory and CPUs fit in this worker's budget (80 % of the
host's memory, twice its CPUs), so a worker never admits more than the host can hold.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from sqlalchemy.engine import Engine as DbEngine

from pipelines.job_record import JobRecord
from pipelines.language.model import Job as PlannedJob
from pipelines.names import QUEUE, run_events_channel
from pipelines.retention import RetentionSettings, collect_if_due
from pipelines.store.advance import FINAL_JOB_STATUSES
from pipelines.store.db import make_engine, migrate, read_scope, session_scope
from pipelines.store.errors import StoreError
from pipelines.store.models import Job
from pipelines.store.outbox import mark_published, pending_outbox, requeue_stale
from pipelines.store.reads import job_row
from pipelines.store.retention import blob_referenced, expire_artifacts
from pipelines.store.transitions import expire_leases
from pipelines.trace import mark
from worker.errors import ConfigError
from worker.executor import ConcurrentSlots, WorkerContext, execute_job, utcnow
from worker.job_files import LocalTransport, Transport, make_transport
from worker.jobs import JobDefaults
from worker.logstream import RedisLog
from worker.sandbox.blobs import remove_if_unused
from worker.sandbox.engine import Engine
from worker.sandbox.reaper import reap
from worker.service.presence import Presence, start_presence
from worker.service.processes import ID_BASE_ENV, PARENT_ENV, SHARE_ENV, parse_share
from worker.service.run_sources import RunSources
from worker.service.shared_budget import SharedBudget, ledger_directory
from worker.settings import Settings
from worker.upload_outbox import replay, take_over

log = logging.getLogger("sandpit.worker")
REAP_EVERY_S = 60.0


class Budget:
    """Memory and CPU this worker may hand out; ``take`` blocks until a job fits."""

    def __init__(self, memory_bytes: int, cpus: float) -> None:
        self.memory_bytes, self.cpus = memory_bytes, cpus
        self.free_memory, self.free_cpus = memory_bytes, cpus
        self.cond = threading.Condition()

    def take(self, memory: int, cpus: float) -> tuple[int, float]:
        memory, cpus = min(memory, self.memory_bytes), min(cpus, self.cpus)  # a huge job still runs alone
        with self.cond:
            self.cond.wait_for(lambda: self.free_memory >= memory and self.free_cpus >= cpus - 1e-9)
            self.free_memory -= memory
            self.free_cpus -= cpus
        return memory, cpus

    def give(self, memory: int, cpus: float) -> None:
        with self.cond:
            self.free_memory += memory
            self.free_cpus += cpus
            self.cond.notify_all()


def host_budget() -> Budget:
    """80 % of memory (never over-committed: memory is not compressible) and twice the cores (CPU
    is: an over-subscribed job runs slower, it does not fail). The processes of a worker of several
    share one (worker/service/shared_budget.py)."""
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return Budget(int(pages * 0.8), 2.0 * (os.cpu_count() or 1))


#: sends one job id to the queue (raises when the broker is away)
Publisher = Callable[[str], None]


@dataclass
class ServiceContext:
    settings: Settings
    engine: Engine
    db: DbEngine
    redis: redis.Redis
    worker_id: str
    send: Publisher
    budget: Budget | SharedBudget = field(default_factory=host_budget)
    defaults: JobDefaults = field(default_factory=JobDefaults)
    stop: threading.Event = field(default_factory=threading.Event)
    sweeper: threading.Thread | None = None
    presence: Presence | None = None  # its row in the workers' table, and the heartbeat
    #: how its jobs' files reach the API (SANDPIT_ARTIFACT_TRANSPORT: worker/job_files.py)
    files: Transport = field(default_factory=LocalTransport)
    #: what the sweeper's periodic collection keeps how long (pipelines/retention.py)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    #: CI_CONCURRENT_ID of this process's first slot (a worker of several processes: processes.py)
    first_concurrent_id: int = 0
    _worker_context: WorkerContext | None = field(default=None, init=False, repr=False)

    def publish(self, job_ids: list[str]) -> None:
        """Send each job id to the queue, then mark it published (the outbox keeps what failed)."""
        if not job_ids:
            return
        sent = []
        for job_id in job_ids:
            try:
                self.send(job_id)
                sent.append(job_id)
            except Exception as exc:  # the broker is away; the sweeper publishes from the outbox later
                log.warning("could not publish job %s: %s", job_id, exc)
                break
        if sent:
            with session_scope(self.db) as s:
                mark_published(s, sent, utcnow())

    def worker_context(self) -> WorkerContext:
        """The context every job of this worker runs with (made once: it holds the lease keeper)."""
        if self._worker_context is None:
            self._worker_context = self._make_worker_context()
        return self._worker_context

    def _make_worker_context(self) -> WorkerContext:
        def sink_for(job: Job) -> Any:
            stream = RedisLog(self.redis, job.id)
            stream.resume(job.attempt)
            self._streams[job.id] = stream
            return stream.sink()

        def on_done(job: Job, record: JobRecord) -> None:
            stream = self._streams.pop(job.id, None) or RedisLog(self.redis, job.id)
            stream.end(str(record.status), announce=(run_events_channel(job.run_id), job.id))

        def on_retried(job: Job, record: JobRecord) -> None:  # the stream goes on into the next attempt
            stream = self._streams.pop(job.id, None) or RedisLog(self.redis, job.id)
            stream.next_attempt(job.attempt, str(record.status), None if record.reason is None else str(record.reason),
                                record.exit_code, announce=(run_events_channel(job.run_id), job.id))

        @contextlib.contextmanager
        def admit(planned: PlannedJob) -> Iterator[object]:
            memory = planned.sandbox.memory_bytes or self.defaults.memory_bytes
            cpus = planned.sandbox.cpus or self.defaults.cpus
            taken = self.budget.take(memory, cpus)
            try:
                yield taken
            finally:
                self.budget.give(*taken)

        def idle() -> bool:  # no job waits in the queue for a worker (one LLEN; Redis away: not idle)
            try:
                return self.redis.llen(QUEUE) == 0
            except redis.RedisError:
                return False

        public_url = self.settings.public_url

        def job_url(job_id: str) -> str:
            return f"{public_url.rstrip('/')}/api/v1/jobs/{job_id}" if public_url else f"sandpit://jobs/{job_id}"

        return WorkerContext(engine=self.engine, db=self.db, worker_id=self.worker_id, lease_s=self.settings.lease_s,
                             defaults=self.defaults, sink_for=sink_for, on_done=on_done, on_retried=on_retried,
                             admit=admit, job_url=job_url, source_for=self.sources.source_for,
                             on_claim=self.sources.prime, slots=ConcurrentSlots(self.first_concurrent_id),
                             files=self.files, idle=idle)

    def __post_init__(self) -> None:
        self._streams: dict[str, RedisLog] = {}
        self.sources = RunSources(self.settings.state_dir, self.db)  # the runs' checked-out commits

    def sweep_once(self, now: dt.datetime | None = None) -> None:
        now = now or utcnow()
        with session_scope(self.db) as s:
            ready = expire_leases(s, now)
        self.publish(ready)
        with session_scope(self.db) as s:
            ready = requeue_stale(s, now, older_than_s=max(30.0, 3 * self.settings.sweep_s))
            ready += [j for j in pending_outbox(s) if j not in ready]
        self.publish(ready)
        with session_scope(self.db) as s:
            expired = expire_artifacts(s, now)
        for item in expired:
            _remove_unreferenced(self, getattr(item, "sha256", ""))
        self.sources.sweep()  # the checked-out commits of runs that have ended
        # forge rows, uploaded trees, other hosts' expired files, mirrors, services' logs: at most
        # once per SANDPIT_GC_EVERY for this state dir, whichever process on it comes first
        done = collect_if_due(self.db, self.settings.state_dir, self.retention, now)
        if done is not None:
            log.info("retention: %s", done.summary())

    def _sweep_loop(self) -> None:
        rounds = 0
        reap_every = max(1, int(REAP_EVERY_S / self.settings.sweep_s))
        while not self.stop.wait(self.settings.sweep_s):
            rounds += 1
            try:
                if self.engine.warm is not None:
                    self.engine.warm.expire()
                self.sweep_once()
                if rounds % reap_every == 0:
                    # kernel objects of another worker on this host that died (its leases are free)
                    for line in reap(self.settings):
                        log.info("reaped %s", line)
            except Exception as exc:  # keep sweeping through database or broker outages
                log.warning("sweep failed: %s", exc)


def _remove_unreferenced(ctx: ServiceContext, sha256: str) -> None:
    """Remove an expired artifact's stored file unless another row (or a job storing the same bytes
    right now) still uses it: worker/sandbox/blobs.py ``remove_if_unused``."""
    def referenced() -> bool:
        with session_scope(ctx.db) as s:
            return blob_referenced(s, sha256)

    if sha256:
        remove_if_unused(ctx.engine.artifact_store, sha256, referenced)


def start_service(settings: Settings, send: Publisher, concurrency: int | None = None) -> ServiceContext:
    """Reap what a dead worker left, migrate the database, start the sweeper and the heartbeat."""
    for line in reap(settings):
        log.info("reaped %s", line)
    url = settings.database()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    migrate(url)
    engine = Engine(settings)
    warm = settings.warm_sandboxes if settings.warm_sandboxes is not None else concurrency or 0
    if warm > 0:  # sandboxes made ahead, one per job slot unless told (worker/sandbox/warm.py)
        from worker.sandbox.warm import WarmPool

        engine.warm = WarmPool(warm, settings.warm_idle_s)
    index, parts = parse_share(os.environ.get(SHARE_ENV, ""))
    budget: Budget | SharedBudget = host_budget()
    if parts > 1:  # a process of a worker of several: one budget for them all
        supervisor = _int_env(PARENT_ENV) or os.getppid()
        budget = SharedBudget(ledger_directory(settings.state_dir, supervisor), index, parts, budget.memory_bytes,
                              budget.cpus)
    ctx = ServiceContext(
        settings=settings, engine=engine, db=make_engine(url), budget=budget,
        first_concurrent_id=_int_env(ID_BASE_ENV),
        files=make_transport(settings, engine.artifact_store),
        retention=RetentionSettings.from_env(os.environ),
        redis=redis.Redis.from_url(settings.redis_url),
        worker_id=f"{socket.gethostname()}-{os.getpid()}", send=send,
    )
    if ctx.files.name == "http":  # before the sweeper: what a dead process of this host left in its outbox
        _start_outbox_replay(ctx)
    ctx.sweeper = threading.Thread(target=ctx._sweep_loop, name="sandpit-sweeper", daemon=True)
    ctx.sweeper.start()
    ctx.presence = start_presence(ctx, concurrency)  # registered, then a heartbeat
    log.info("worker %s ready (runtime %s)", ctx.worker_id, ctx.engine.runtime(None).name)
    return ctx


def _int_env(name: str) -> int:
    text = os.environ.get(name, "").strip() or "0"
    if not text.isdigit():
        raise ConfigError(f"{name} must be a whole number, not {text!r}")
    return int(text)


def _start_outbox_replay(ctx: ServiceContext) -> None:
    """At a worker's start: take over what its host's outbox holds (now, before the sweeper could
    settle those attempts), then deliver and record it on a thread of its own."""
    from worker.remote_files import HttpTransport  # httpx: only a worker with the http transport needs it

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
        stream, channel = RedisLog(ctx.redis, job_id), (run_events_channel(run_id), job_id)
        delivery = next((d for d in taken if d.job_id == job_id), None)
        if delivery is not None and _queued_again(ctx, job_id):  # as on_retried: on into the next attempt
            reason, code = delivery.record.get("reason"), delivery.record.get("exit_code")
            stream.next_attempt(delivery.attempt, status, None if reason is None else str(reason),
                                code if isinstance(code, int) else None, announce=channel)
        else:
            stream.end(status, announce=channel)

    def run() -> None:
        try:
            replay(work, transport, taken, ctx.publish, announce)
        except Exception as exc:
            log.warning("replaying the outbox failed: %s", exc)

    threading.Thread(target=run, name="sandpit-outbox", daemon=True).start()


def _queued_again(ctx: ServiceContext, job_id: str) -> bool:
    """Whether the result just recorded for ``job_id`` was retried (its status is not final)."""
    try:
        with read_scope(ctx.db) as s:
            return job_row(s, job_id).status not in FINAL_JOB_STATUSES
    except StoreError:  # the run is gone: nothing follows
        return False


def stop_service(ctx: ServiceContext) -> None:
    ctx.stop.set()
    if ctx.presence is not None:
        ctx.presence.stop()
    ctx.engine.close()
    ctx.files.close()


def handle_job(ctx: ServiceContext, job_id: str) -> None:
    """The task body: claim and run the job (waiting for room in the budget), publish what became ready."""
    mark("task")
    ctx.publish(execute_job(ctx.worker_context(), job_id))
