"""Retention of what the service keeps on a host and in its database (adapter; "now" is passed in).

One collection, for one state dir and the database it serves, removes:

1. from the database (:mod:`pipelines.store.retention_forges`): commit statuses done with for
   ``SANDPIT_STATUS_RETENTION``, web-hook deliveries older than ``SANDPIT_DELIVERY_RETENTION``
   (their rows are the replay protection, so at least a week: GitHub.com offers redelivery of the
   past 3 days, GitHub Enterprise Server of 7, GitLab lists 7 days of "Recent events" and keeps a
   request's log to resend for about a month, Gitea and Forgejo replay what their hook-task table
   keeps, a week by default; the default 30 days covers them all), uploaded trees no
   run has needed for ``SANDPIT_SOURCE_RETENTION``, and the week-old list of expired files;
2. this host's copies of stored files the store stopped naming (expired artifacts, replaced cache
   archives: ``expired_blob``, read from this state dir's cursor, an hour after they were noted),
   each kept if a row names it again — the API's copies in ``http`` deployments, a worker's copies
   of files it fetched, so they go when a shared-disk store's would;
3. the checked-out trees (``<state>/sources/<run>``) of runs that have ended, and leftovers of an
   interrupted removal;
4. mirrors (``<state>/mirrors/<id>.git``) of repositories that were removed, of runs that have
   ended (a run whose repository was removed fetched into ``run-<id>.git``), and of repositories
   nothing was fetched into for ``SANDPIT_MIRROR_IDLE`` (the next run fetches it again, cold), each
   under the mirror's own lock (skipped while a fetch holds it);
5. services' logs (``<state>/logs/<job>.svc<N>.jsonl``) untouched for ``SANDPIT_SERVICE_LOG_RETENTION``.

Files are removed by :mod:`pipelines.files.removal`: by one checked name under a directory fd,
never through a symlink. A collection holds ``<state>/gc/service.lock`` (another process on the
same state dir skips or waits), and runs at most once per ``SANDPIT_GC_EVERY`` when asked through
:func:`collect_if_due` (the worker's sweeper, the API): the check is one ``stat``. ``sandpit gc``
runs it at once. Each setting's ``0`` keeps that kind for good.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine

from pipelines.files.locks import hold, try_hold
from pipelines.files.removal import entries, opened_dir, remove_blob_if_unused, remove_entry
from pipelines.files.temps import write_atomic
from pipelines.language.quantities import parse_duration
from pipelines.store.cache_blobs import forget_unnamed_manifests
from pipelines.store.db import read_scope, session_scope
from pipelines.store.outbox import prune_outbox
from pipelines.store.retention import (
    blob_referenced,
    expired_blobs_after,
    last_expired_blob_id,
    prune_expired_blobs,
)
from pipelines.store.retention_forges import (
    expire_commit_statuses,
    expire_deliveries,
    expire_source_archives,
    known_repositories,
)
from pipelines.store.sources import ended_runs

log = logging.getLogger("sandpit.retention")
DAY = 86400.0
MIN_DELIVERY_RETENTION_S = 7 * DAY
EXPIRED_KEPT_S = 7 * DAY  # how long the list of expired files is kept for hosts to read
OUTBOX_KEPT_S = DAY  # a published outbox row is read only seconds after it was written
FILE_GRACE_S = 3600.0  # an expired file is looked at this long after, a leftover this long after
ARCHIVE_GRACE_S = 3600.0  # a tree uploaded this recently may belong to a run not committed yet
_RUN_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
_MIRROR = re.compile(r"([A-Za-z0-9-]{1,64})\.git")
_SERVICE_LOG = re.compile(r"[A-Za-z0-9-]{1,64}\.svc[0-9]{1,3}\.jsonl")


class RetentionConfigError(ValueError):
    """A retention setting that cannot be used; the message names it."""


@dataclass(frozen=True)
class RetentionSettings:
    """The service's retention periods in seconds (0: keep for good), from the environment."""

    every_s: float = 600.0
    statuses_s: float = 30 * DAY
    deliveries_s: float = 30 * DAY
    sources_s: float = 7 * DAY
    mirror_idle_s: float = 30 * DAY
    service_logs_s: float = 7 * DAY

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RetentionSettings:
        """Read ``SANDPIT_*`` (durations as ``30d``, ``12h``, ``3600``).

        >>> RetentionSettings.from_env({"SANDPIT_DELIVERY_RETENTION": "90d"}).deliveries_s / DAY
        90.0
        >>> try:
        ...     RetentionSettings.from_env({"SANDPIT_DELIVERY_RETENTION": "1d"})
        ... except RetentionConfigError as exc:
        ...     print(str(exc)[:47])
        SANDPIT_DELIVERY_RETENTION='1d' is under a week
        """
        settings = cls(
            every_s=_seconds(env, "SANDPIT_GC_EVERY", cls.every_s),
            statuses_s=_seconds(env, "SANDPIT_STATUS_RETENTION", cls.statuses_s),
            deliveries_s=_seconds(env, "SANDPIT_DELIVERY_RETENTION", cls.deliveries_s),
            sources_s=_seconds(env, "SANDPIT_SOURCE_RETENTION", cls.sources_s),
            mirror_idle_s=_seconds(env, "SANDPIT_MIRROR_IDLE", cls.mirror_idle_s),
            service_logs_s=_seconds(env, "SANDPIT_SERVICE_LOG_RETENTION", cls.service_logs_s),
        )
        if 0 < settings.deliveries_s < MIN_DELIVERY_RETENTION_S:
            raise RetentionConfigError(
                f"SANDPIT_DELIVERY_RETENTION={env['SANDPIT_DELIVERY_RETENTION']!r} is under a week: a forge's "
                "redelivery of an older delivery would be acted on again (GitHub Enterprise Server and GitLab "
                "offer 7 days); give 7d or more, or 0 to keep them for good")
        return settings


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    if text == "0":
        return 0.0
    try:
        return float(parse_duration(text))
    except ValueError as exc:
        raise RetentionConfigError(f"{name}={text!r}: {exc}") from None


@dataclass
class Collected:
    """What one collection removed."""

    statuses: int = 0
    deliveries: int = 0
    archives: int = 0
    files: int = 0
    trees: int = 0
    mirrors: int = 0
    service_logs: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"removed {self.statuses} commit status(es), {self.deliveries} web-hook deliver(ies), "
                f"{self.archives} uploaded tree(s), {self.files} expired stored file(s), {self.trees} run tree(s), "
                f"{self.mirrors} mirror(s), {self.service_logs} service log(s)")


def _gc_dir(state_dir: Path) -> Path:
    path = state_dir / "gc"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def due(state_dir: Path, settings: RetentionSettings, now: float) -> bool:
    """Whether a periodic collection is due (one ``stat`` of the stamp)."""
    if settings.every_s <= 0:
        return False
    try:
        return now - os.stat(os.path.join(state_dir, "gc", "service-stamp")).st_mtime >= settings.every_s
    except FileNotFoundError:
        return True


def collect_if_due(db: Engine, state_dir: Path, settings: RetentionSettings, now: dt.datetime) -> Collected | None:
    """The periodic caller's collection: None unless due and no other process is collecting."""
    if not due(state_dir, settings, time.time()):
        return None
    return collect(db, state_dir, settings, now, only_if_due=True)


def collect(db: Engine, state_dir: Path, settings: RetentionSettings, now: dt.datetime, *, wait: bool = False,
            only_if_due: bool = False) -> Collected | None:
    """One collection (see the module docstring); None when another one runs (and not ``wait``)."""
    gc_dir = _gc_dir(state_dir)
    lock = hold(gc_dir / "service.lock") if wait else try_hold(gc_dir / "service.lock")
    if lock is None:
        return None
    with lock:
        if only_if_due and not due(state_dir, settings, time.time()):
            return None
        _touch(gc_dir / "service-stamp")
        done = Collected()
        _expire_rows(db, settings, now, done)
        done.files = _remove_expired_files(db, state_dir, gc_dir, now)
        done.trees = _remove_ended_trees(db, state_dir / "sources")
        done.mirrors = _remove_mirrors(db, state_dir / "mirrors", settings, time.time())
        done.service_logs = _remove_service_logs(state_dir / "logs", settings, time.time())
        return done


def _touch(path: Path) -> None:
    try:
        os.utime(path, follow_symlinks=False)
    except FileNotFoundError:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))


def _ago(now: dt.datetime, seconds: float) -> dt.datetime:
    return now - dt.timedelta(seconds=seconds)


def _expire_rows(db: Engine, settings: RetentionSettings, now: dt.datetime, done: Collected) -> None:
    if settings.statuses_s > 0:
        with session_scope(db) as session:
            done.statuses = expire_commit_statuses(session, _ago(now, settings.statuses_s))
    if settings.deliveries_s > 0:
        with session_scope(db) as session:
            done.deliveries = expire_deliveries(session, _ago(now, settings.deliveries_s))
    if settings.sources_s > 0:
        with session_scope(db) as session:
            done.archives = expire_source_archives(session, ended_before=_ago(now, settings.sources_s),
                                                   stored_before=_ago(now, ARCHIVE_GRACE_S))
    with session_scope(db) as session:
        prune_outbox(session, _ago(now, OUTBOX_KEPT_S))  # else it keeps a row for every job ever queued
        prune_expired_blobs(session, _ago(now, EXPIRED_KEPT_S))
        forget_unnamed_manifests(session)  # member rows of caches that were replaced


def _read_cursor(gc_dir: Path) -> int:
    with opened_dir(gc_dir) as fd:
        if fd is None:
            return 0
        try:
            handle = os.open("expired-cursor", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            return 0
        with os.fdopen(handle, "rb") as f:
            text = f.read(32).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else 0


def _write_cursor(gc_dir: Path, cursor: int) -> None:
    with opened_dir(gc_dir) as fd:
        if fd is not None:
            write_atomic(fd, "expired-cursor", f"{cursor}\n".encode())


def _remove_expired_files(db: Engine, state_dir: Path, gc_dir: Path, now: dt.datetime) -> int:
    """This host's copies of the files the store stopped naming, from this state dir's cursor."""
    store = state_dir / "artifacts"
    cursor = _read_cursor(gc_dir)
    with read_scope(db) as session:
        if cursor > last_expired_blob_id(session):
            cursor = 0  # the state dir now serves another (or a new) database
    removed = 0
    while True:
        with read_scope(db) as session:
            batch = expired_blobs_after(session, cursor, _ago(now, FILE_GRACE_S))
        if not batch:
            return removed
        for _id, sha in batch:

            def referenced(sha: str = sha) -> bool:
                with read_scope(db) as session:
                    return blob_referenced(session, sha)

            removed += remove_blob_if_unused(store, sha, referenced)
        cursor = batch[-1][0]
        _write_cursor(gc_dir, cursor)


def _leftover(name: str, st: os.stat_result, now: float) -> bool:
    """A directory an interrupted removal renamed aside (``.gc-*``), an hour on."""
    return name.startswith(".gc-") and now - st.st_mtime > FILE_GRACE_S


def _remove_ended_trees(db: Engine, trees: Path) -> int:
    """``<state>/sources/<run>`` of runs that have ended or that the store does not know (the
    worker's own sweeper does the same for the runs it made; this also serves a host whose
    worker is stopped)."""
    listed = entries(trees)
    now = time.time()
    removed = sum(remove_entry(trees, name) for name, st in listed if _leftover(name, st, now))
    names = [name for name, st in listed if _RUN_ID.fullmatch(name) and stat.S_ISDIR(st.st_mode)]
    if not names:
        return removed
    with read_scope(db) as session:
        gone = ended_runs(session, names)
    return removed + sum(remove_entry(trees, name) for name in sorted(gone))


def _last_fetch(mirror: Path) -> float:
    """When something was last fetched into ``mirror``: the newest mtime of the files a fetch
    writes (a read, a checkout out of it, changes none of them)."""
    newest = 0.0
    for part in ("", "FETCH_HEAD", "shallow", "objects/pack", "refs"):
        with contextlib.suppress(OSError):
            newest = max(newest, os.stat(mirror / part, follow_symlinks=False).st_mtime)
    return newest


def _remove_mirrors(db: Engine, mirrors: Path, settings: RetentionSettings, now: float) -> int:
    listed = entries(mirrors)
    removed = sum(remove_entry(mirrors, name) for name, st in listed if _leftover(name, st, now))
    found = {m.group(1): name for name, st in listed
             if (m := _MIRROR.fullmatch(name)) is not None and stat.S_ISDIR(st.st_mode)}
    runs = [key for key in found if key.startswith("run-")]
    repos = [key for key in found if not key.startswith("run-")]
    with read_scope(db) as session:
        ended = {f"run-{run}" for run in ended_runs(session, [key[4:] for key in runs])}
        known = known_repositories(session, repos)
    for key, name in sorted(found.items()):
        gone = key in ended or (key in repos and key not in known)
        idle = (key in known and settings.mirror_idle_s > 0
                and now - _last_fetch(mirrors / name) > settings.mirror_idle_s)
        if not (gone or idle):
            continue
        lock = try_hold(mirrors / f"{key}.lock")
        if lock is None:
            continue  # a fetch is under way: it is in use
        with lock:
            removed += remove_entry(mirrors, name)
            if gone:  # nothing fetches into it again; an idle repository's next fetch takes the lock
                remove_entry(mirrors, f"{key}.lock")
    return removed


def _remove_service_logs(logs: Path, settings: RetentionSettings, now: float) -> int:
    if settings.service_logs_s <= 0:
        return 0
    old = [name for name, st in entries(logs, _SERVICE_LOG.fullmatch)
           if stat.S_ISREG(st.st_mode) and now - st.st_mtime > settings.service_logs_s]
    return sum(remove_entry(logs, name) for name in old)


class RetentionLoop:
    """A process's periodic collection on a thread of its own (the API's; a worker's sweeper calls
    :func:`collect_if_due` itself): the first after ``every_s``, then whenever due."""

    def __init__(self, db: Engine, state_dir: Path, settings: RetentionSettings) -> None:
        self.db, self.state_dir, self.settings = db, state_dir, settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.settings.every_s <= 0:
            return
        self._thread = threading.Thread(target=self._loop, name="sandpit-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.every_s):
            try:
                done = collect_if_due(self.db, self.state_dir, self.settings, dt.datetime.now(dt.UTC))
            except Exception as exc:  # the database may be away for a while: try again next time
                log.warning("retention failed: %s", exc)
                continue
            if done is not None:
                log.info("retention: %s", done.summary())
