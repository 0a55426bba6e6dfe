"""Running one stored job: claim → sandbox → record → advance. Shared by ``sandpit run`` (local mode)
and the Celery task, so both follow exactly the same rules.

The database owns the job: the claim is a compare-and-set, a lease is renewed while the job runs
(losing it, or a cancel request, stops the sandbox), and the result is recorded only for the attempt
that was claimed. The caller publishes the job ids this returns (newly queued), after the commit.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine as DbEngine
from sqlmodel import Session

from pipelines.job_record import JobRecord, Status
from pipelines.language.model import Job as PlannedJob
from pipelines.store.db import read_scope, session_scope
from pipelines.store.models import Job, Run
from pipelines.store.reads import artifact_inputs, read_run_row, stop_requested
from pipelines.store.spec import job_from_spec
from pipelines.store.transitions import claim_job, finish_job, renew_lease
from pipelines.trace import mark
from worker import cache
from worker.errors import InvalidRequest, SandboxError, SandpitError, job_outcome
from worker.job_files import LocalTransport, Transport
from worker.jobs import JobDefaults, image_name, request_for
from worker.report_files import attach_test_reports
from worker.sandbox import blobs
from worker.sandbox.artifacts import artifact_path
from worker.sandbox.engine import Engine
from worker.sandbox.images import StoredImage
from worker.sandbox.logs import OutputSink
from worker.sandbox.seed import Seed
from worker.sandbox.warm import Afterwards


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class WorkspaceSource:
    """The project files every job of a run starts with (local mode: the git work tree)."""

    root: Path
    files: tuple[str, ...] | None = None


@dataclass
class WorkerContext:
    engine: Engine
    db: DbEngine
    worker_id: str
    lease_s: float = 30.0
    defaults: JobDefaults = field(default_factory=JobDefaults)
    # called outside the claim's transaction, under the lease: it may fetch and check out a commit
    source_for: Callable[[Run, PlannedJob], WorkspaceSource | None] = lambda _run, _job: None
    #: called in the claim's transaction with the claimed job's run (the service reads what
    #: ``source_for`` needs there, instead of in a transaction of its own)
    on_claim: Callable[[Session, Run], None] = lambda _session, _run: None
    sink_for: Callable[[Job], OutputSink | None] = lambda _job: None
    on_done: Callable[[Job, JobRecord], None] = lambda _job, _record: None
    #: instead of ``on_done`` for an attempt whose ``retry:`` queued the job again (None: on_done)
    on_retried: Callable[[Job, JobRecord], None] | None = None
    # wraps the sandbox run: the service waits here for room in its memory/cpu budget
    admit: Callable[[PlannedJob], AbstractContextManager[object]] = lambda _planned: nullcontext()
    now: Callable[[], dt.datetime] = utcnow
    leases: LeaseKeeper = field(default_factory=lambda: LeaseKeeper())
    #: where people find a job (CI_JOB_URL): the API's address when there is one, else sandpit's log
    job_url: Callable[[str], str] = lambda job_id: f"sandpit://jobs/{job_id}"
    slots: ConcurrentSlots = field(default_factory=lambda: ConcurrentSlots())
    #: how a job's files reach the API (worker/job_files.py): the shared state dir, or HTTP
    files: Transport = field(default_factory=lambda: LocalTransport())
    #: whether no job waits for a worker: only then is a warm sandbox made after a job (under load the
    #: next job comes at once, and its launcher would cost more than the sandbox saves)
    idle: Callable[[], bool] = lambda: True


class ConcurrentSlots:
    """CI_CONCURRENT_ID: the lowest number no other running job of this worker holds (GitLab: "a
    unique ID of build execution within a single executor"), so a job can name a per-slot path."""

    def __init__(self, first: int = 0) -> None:
        self._held: set[int] = set()
        self._lock = threading.Lock()
        self.first = first  # a worker of several processes numbers each one's slots on from the last's

    def take(self) -> int:
        with self._lock:
            slot = next(i for i in range(self.first, self.first + len(self._held) + 1) if i not in self._held)
            self._held.add(slot)
            return slot

    def give(self, slot: int) -> None:
        with self._lock:
            self._held.discard(slot)


def image_shell(engine: Engine, reference: str, image: StoredImage | None = None) -> str:
    """The shell the job's image (``image``, when the caller has it already) runs scripts with
    (found once per image); /bin/sh when the store does not have the image: the engine then
    refuses the job with its own message. Never pulls (:func:`pull_image` does, first)."""
    from worker.errors import ImageError
    from worker.sandbox.shell import shell_for_image

    if image is None:
        try:
            image = engine.images.get(reference, policy="never")
        except (ImageError, OSError):
            return "/bin/sh"
    return image.shell or shell_for_image(image.key, image.rootfs)


def pull_image(engine: Engine, reference: str, cancel: threading.Event | None = None,
               policies: tuple[str, ...] | None = None) -> tuple[tuple[str, ...], StoredImage]:
    """Get the job's image into the store when it is not there (pulled as the pull policy says,
    before the shell is chosen: the shell is the image's); the progress lines, for the job's log,
    and the image (which the shell and the engine then take as it is, rather than each looking it
    up again). ``policies`` is the job's ``image:pull_policy`` (GitLab's: each one is tried when
    the one before could not reach the registry); None: the worker's default."""
    from worker.sandbox.registry.skopeo import PullError

    lines: list[str] = []
    log = logging.getLogger("sandpit.images")

    def say(line: str) -> None:
        lines.append(line)
        log.info("%s", line)

    tries = policies or (None,)
    for i, policy in enumerate(tries):
        try:
            image = engine.images.get(reference, progress=say, policy=policy, cancel=cancel)
        except PullError as exc:
            if i == len(tries) - 1:
                raise
            say(f"pull_policy {policy} failed ({exc}); trying {tries[i + 1]}")
            continue
        return tuple(lines), image  # the pull's progress lines, once it has said them all
    raise AssertionError("unreachable: the last policy's failure is raised")


def artifact_sources(planned: PlannedJob) -> tuple[str, ...]:
    """Names of the jobs whose artifacts this job starts with (GitLab: dependencies, else needs
    with ``artifacts: true``, else every job of earlier stages)."""
    if planned.needs is not None:
        # with needs, only needs with `artifacts: true` download, and `dependencies` can only narrow
        # them: `needs: []` or `needs: [{job: b, artifacts: false}]` beside `dependencies: [b]` take none
        wanted = tuple(n.job for n in planned.needs if n.artifacts)
        if planned.dependencies is not None:
            wanted = tuple(w for w in wanted if any(_same_job(w, d) for d in planned.dependencies))
        return wanted
    if planned.dependencies is not None:
        wanted = planned.dependencies
    else:
        return planned.depends_on
    # a parallel/matrix job is named by its base name: "test" takes "test 1/2" and "test: [a]"
    return tuple(name for name in planned.depends_on if any(_same_job(name, w) for w in wanted))


def _same_job(name: str, wanted: str) -> bool:
    """``name`` is the job ``wanted`` or one of its parallel/matrix instances."""
    return name == wanted or name.startswith((wanted + " ", wanted + ":"))


def _inputs(session: Session, run_id: str, dependencies: tuple[str, ...], store: Path,
            now: dt.datetime) -> tuple[tuple[tuple[str, Path, str], ...], tuple[str, ...]]:
    """Artifacts of the named jobs of this run, as (path in workspace, stored file, its sha256),
    and the names of those whose artifacts expired (:class:`pipelines.store.reads.ArtifactInputs`)."""
    found = artifact_inputs(session, run_id, dependencies, now)
    return tuple((path, artifact_path(store, sha), sha) for path, sha in found.files), found.expired


def _refuse_expired(expired: tuple[str, ...]) -> None:
    """GitLab's missing_dependency_failure: the job fails before it starts (``failed``/``invalid_spec``)."""
    if expired:
        names = ", ".join(repr(name[:100]) for name in expired[:10]) + (", ..." if len(expired) > 10 else "")
        raise InvalidRequest(f"this job depends on jobs whose artifacts expired or were removed: {names}; "
                             "retry them, then this job, to make the artifacts again")


def _checked_inputs(inputs: tuple[tuple[str, Path, str], ...]) -> tuple[tuple[str, Path], ...]:
    """The inputs whose stored bytes hash to their sha256 (hashed once per file version, outside
    any transaction); a torn or tampered file is never fed to a job: it fails with infra_error (a
    missing one fails the job's seeding, as it always did)."""
    damaged = [rel for rel, stored, sha in inputs if stored.exists() and not blobs.intact(stored, sha)]
    if damaged:
        logging.getLogger("sandpit.worker").error("stored artifacts %r do not match their sha256", damaged[:20])
        raise SandboxError("the stored content of artifact(s) " + ", ".join(repr(p[:200]) for p in damaged[:5])
                           + " of an earlier job does not match its sha256 (the artifact store is damaged)")
    return tuple((rel, stored) for rel, stored, _sha in inputs)


def _cache_entries(ctx: WorkerContext, planned: PlannedJob, trust: str,
                   source_root: Path | None) -> tuple[tuple[str, str], ...]:
    """The caches the job pulls (a read of its own: a ``key: files`` key hashes the source's files,
    which exist only once the source is there)."""
    if not planned.caches:
        return ()
    with read_scope(ctx.db) as s:
        return cache.entries(s, planned.caches, trust, source_root)


def _junit_globs(planned: PlannedJob) -> tuple[str, ...]:
    return planned.artifacts.junit if planned.artifacts is not None else ()


def execute_job(ctx: WorkerContext, job_id: str) -> list[str]:
    """Run job ``job_id`` if this worker wins the claim; returns the ids it made ready. Its sandbox
    is torn down (and a warm one made for the next job like it) once its result is recorded and
    announced: the run's answer does not wait for either."""
    afterwards = Afterwards()
    try:
        return _execute_job(ctx, job_id, afterwards)
    finally:
        ctx.engine.finish(afterwards, warm=afterwards.shape is not None and ctx.idle())


def _execute_job(ctx: WorkerContext, job_id: str, afterwards: Afterwards) -> list[str]:
    with session_scope(ctx.db) as s:
        job = claim_job(s, job_id, ctx.worker_id, ctx.now(), ctx.lease_s)
        if job is None:
            return []  # already claimed, finished, cancelled, or a forged id: nothing to do
        run = read_run_row(s, job.run_id)
        assert run is not None  # the claim matched a job of a live run in this transaction
        attempt = job.attempt
        planned = job_from_spec(job.spec)
        trust = run.trust
        store = ctx.engine.artifact_store
        inputs, expired = _inputs(s, run.id, artifact_sources(planned), store, ctx.now())
        secrets = tuple(str(v) for v in (getattr(run, "secrets", None) or {}).values())
        secret_env = tuple((str(k), str(v)) for k, v in (getattr(run, "secrets", None) or {}).items())
        job_files = ctx.files.claimed(s, job, ctx.worker_id, ctx.now())  # http: the job's token, minted here
        ctx.on_claim(s, run)
    mark("claimed")
    lease = ctx.leases.watch(ctx, job_id, attempt)
    slot = ctx.slots.take()
    source_root: Path | None = None
    try:
        try:
            _refuse_expired(expired)
            source = ctx.source_for(run, planned)
            source_root = source.root if source else None
            found = _cache_entries(ctx, planned, trust, source_root)
            job_files.fetch_caches(found)  # http: what the local store lacks comes from the API
            job_files.fetch([sha for _rel, _stored, sha in inputs])
            # cache first, then the dependencies' artifacts (which win where both name a file)
            files = cache.restore(store, found) + _checked_inputs(inputs)
            job_env = (("CI_JOB_ID", job_id), ("CI_JOB_URL", ctx.job_url(job_id)), ("CI_CONCURRENT_ID", str(slot)))
            reference = image_name(planned, ctx.defaults.image)
            notes, image = pull_image(ctx.engine, reference, lease.cancel,
                                      planned.image.pull_policy if planned.image is not None else None)
            req = request_for(planned, defaults=ctx.defaults, extra_env=job_env + secret_env,
                              shell=image_shell(ctx.engine, reference, image))
            seed = Seed(source_dir=source.root if source else None,
                        source_files=source.files if source else None, files=files)
            mark("engine_in")
            with ctx.admit(planned):
                result = ctx.engine.run(req, name=planned.name, sink=ctx.sink_for(job), cancel=lease.cancel,
                                        seed=seed, secrets=secrets, cache_paths=cache.cache_paths(planned.caches),
                                        report_paths=_junit_globs(planned), notes=notes, image=image,
                                        afterwards=afterwards)
        except Exception as exc:  # a claimed job ends with a record, never stays running
            # the same mapping as Engine.run's (worker/errors.py): a refusal is failed/invalid_spec,
            # anything else of sandpit's own is error/infra_error, with its message
            result = JobRecord.not_run(planned.name, job_outcome(exc), job_id=job_id)
            if not isinstance(exc, SandpitError):
                logging.getLogger("sandpit.worker").exception("job %s ended by an unexpected error", job_id)
    finally:
        ctx.slots.give(slot)
    mark("engine_out")
    try:
        if lease.lost.is_set():
            return []  # the lease went to someone else; their record counts, not ours
        record = attach_test_reports(result.for_attempt(attempt), _junit_globs(planned), store)
        saved = _store_caches(planned, store, record, source_root, job_id)
        # still under the lease: the API has every file before the record names it (http transport)
        delivered = job_files.deliver(record, saved, lease.lost.is_set)
    finally:
        ctx.leases.unwatch(lease)
    if delivered is None or lease.lost.is_set():
        return []
    record = delivered
    if record.status not in CACHED_STATUSES:  # the API refused the delivery: its caches' files are not there
        saved = []
    mark("delivered")
    newly = _record_result(ctx, job_id, attempt, record, trust, saved)
    mark("recorded")
    done = ctx.on_retried if ctx.on_retried is not None and job_id in newly else ctx.on_done
    try:
        done(job, record)
    except Exception as exc:  # the live stream's end marker is a courtesy; the record is stored
        logging.getLogger("sandpit.worker").warning("job %s: could not announce its end: %s", job_id, exc)
    mark("announced")
    return newly


RECORD_RETRY_S = (0.1, 0.3, 1.0, 3.0)  # a database hiccup while recording waits this long, then the lease decides
CACHED_STATUSES = (Status.SUCCEEDED, Status.FAILED)  # an attempt that ended otherwise names no cache


def _store_caches(planned: PlannedJob, store: Path, record: JobRecord, source_root: Path | None,
                  job_id: str) -> list[cache.SavedCache]:
    """The manifests of the caches this attempt pushes, stored (the database names them later)."""
    if not planned.caches or record.status not in CACHED_STATUSES:
        return []
    try:
        return cache.store_manifests(planned.caches, store, record.cache_files, record.status, source_root)
    except Exception as exc:  # a cache that cannot be saved never costs the result
        logging.getLogger("sandpit.worker").warning("job %s: its cache was not saved: %s", job_id, exc)
        return []


def _record_result(ctx: WorkerContext, job_id: str, attempt: int, record: JobRecord, trust: str,
                   saved: list[cache.SavedCache]) -> list[str]:
    """Store the attempt's result (and its caches). A failure of the database is retried a few times
    (seconds, not the lease's ~25 s) so a brief outage costs nothing; a cache that cannot be saved
    never costs the result. If the database stays away, the lease expires and the sweeper settles the
    job as worker_lost or retries it."""
    log = logging.getLogger("sandpit.worker")
    if saved:
        try:
            with session_scope(ctx.db) as s:
                cache.record_caches(s, saved, trust, ctx.now())
        except Exception as exc:
            log.warning("job %s: its cache was not saved: %s", job_id, exc)
    for delay in (*RECORD_RETRY_S, None):
        try:
            with session_scope(ctx.db) as s:
                return finish_job(s, job_id, attempt, record.to_json(), ctx.now())
        except Exception as exc:
            if delay is None:
                raise
            log.warning("job %s: recording its result failed (%s); retrying in %.1fs", job_id, exc, delay)
            time.sleep(delay)
    return []


CANCEL_POLL_S = 0.5  # how often a running job looks for a cancel request (cheap read)
KEEPER_IDLE_EXIT_S = 30.0  # the lease keeper's thread ends after this long with no job to watch


@dataclass(eq=False)
class AttemptLease:
    """One running attempt the keeper watches: ``cancel`` is set when the job must stop (a cancel
    request, or the lease is lost), ``lost`` when the attempt is no longer this worker's."""

    ctx: WorkerContext
    job_id: str
    attempt: int
    renew_every: float
    next_renewal: float
    next_check: float
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)  # held while it is being checked
    watched: bool = True


class LeaseKeeper:
    """One thread renews the lease of every running job of this worker (every lease_s/3) and,
    between renewals, looks for cancel requests (every CANCEL_POLL_S). A thread per job would put
    a thread start (and its hand-shake) on every job's path; this one is started once and ends
    after KEEPER_IDLE_EXIT_S without jobs."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._leases: set[AttemptLease] = set()
        self._thread: threading.Thread | None = None
        self._wakes_at = 0.0  # when the keeper's thread wakes next by itself (monotonic; 0: now)

    def watch(self, ctx: WorkerContext, job_id: str, attempt: int) -> AttemptLease:
        renew_every = max(0.05, ctx.lease_s / 3)
        now = time.monotonic()
        lease = AttemptLease(ctx, job_id, attempt, renew_every, next_renewal=now + renew_every,
                      next_check=now + min(CANCEL_POLL_S, renew_every))
        with self._cond:
            self._leases.add(lease)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="sandpit-leases", daemon=True)
                self._thread.start()
            if lease.next_check < self._wakes_at:
                # only when the keeper would sleep past this lease's first check: waking it for
                # every job cost a thread switch per job (4 % of a busy worker's Python CPU)
                self._cond.notify()
        return lease

    def unwatch(self, lease: AttemptLease) -> None:
        """Stop watching; returns once no renewal or check of this lease is in flight."""
        with lease.lock:
            lease.watched = False
        with self._cond:
            self._leases.discard(lease)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._leases:
                        self._wakes_at = time.monotonic() + KEEPER_IDLE_EXIT_S
                        if not self._cond.wait(KEEPER_IDLE_EXIT_S) and not self._leases:
                            self._thread = None
                            return
                        continue
                    now = time.monotonic()
                    due = [lease for lease in self._leases if lease.next_check <= now]
                    if due:
                        self._wakes_at = 0.0  # checking: a lease added meanwhile is seen next round
                        break
                    self._wakes_at = min(lease.next_check for lease in self._leases)
                    self._cond.wait(self._wakes_at - now)
            for lease in due:
                self._check(lease)

    def _check(self, lease: AttemptLease) -> None:
        with lease.lock:
            if not lease.watched:
                return
            ctx = lease.ctx
            renewing = time.monotonic() >= lease.next_renewal
            try:
                if renewing:
                    with session_scope(ctx.db) as s:
                        status = renew_lease(s, lease.job_id, ctx.worker_id, lease.attempt, ctx.now(), ctx.lease_s)
                    held, cancelled = status.held, status.cancel_requested
                else:
                    held, cancelled = True, stop_requested(ctx.db, lease.job_id)
            except Exception as exc:  # a DB hiccup must not kill the job; the next round retries
                logging.getLogger("sandpit.worker").warning("lease/cancel check of job %s failed: %s",
                                                            lease.job_id, exc)
                held, cancelled = True, False
            finally:
                now = time.monotonic()
                if renewing:
                    lease.next_renewal = now + lease.renew_every
                lease.next_check = now + min(CANCEL_POLL_S, lease.renew_every)
            if not held:
                lease.lost.set()
                lease.cancel.set()
                lease.watched = False
            elif cancelled:
                lease.cancel.set()
        if not lease.watched:
            with self._cond:
                self._leases.discard(lease)

