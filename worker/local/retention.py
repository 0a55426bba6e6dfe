"""Retention on this host for what local runs and ``sandpit exec`` keep (adapter): ``sandpit gc``.

The service expires its own artifacts (worker/service/context.py); local runs and ``exec`` have no database
to expire rows from, so without this their logs and artifacts grew without bound. Each run and
exec leaves a record (:mod:`worker.local.records`); a collection

1. removes records older than ``SANDPIT_RETENTION`` and then, oldest first, records past
   ``SANDPIT_RETENTION_SIZE`` (their logs plus their stored files), and with each its logs;
2. evicts local ``cache:`` entries (:mod:`worker.local.cache`), least recently used first, until
   they name at most ``SANDPIT_CACHE_SIZE``;
3. removes each stored file those named, through the blob store's own retention
   (``blobs.remove_if_unused``: renamed aside first, then kept if it is still named or was stored
   or reused within the last hour, so a run storing the same bytes at this moment keeps them).
   "Still named" asks every record and cache entry left and, when there is one, the service's
   database (``SANDPIT_DATABASE_URL``, else ``<state>/sandpit.db``): a file the service also keeps
   stays; a database that cannot be asked keeps everything;
4. removes the private stores of local runs that were killed (``<state>/local/run-*`` untouched
   for a day).

Nothing else is touched: files no record names (the service's logs, say) are not this module's.
It runs as ``sandpit gc`` and automatically at the start of ``sandpit run`` (in the process) and of
``sandpit exec`` (in a detached ``sandpit gc --auto``, so the command does not wait), at most once per
``SANDPIT_GC_EVERY``: the check is one ``stat`` of a stamp file, a few microseconds.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

from pipelines.record import field, record
from worker import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from worker.local.records import LocalRecord
    from worker.settings import Settings

SCRATCH_IDLE_S = 86400.0  # a local run's private store untouched this long belongs to a dead run


@record
class Collected:
    records: int = 0
    logs: int = 0
    files: int = 0
    cache_entries: int = 0
    scratch: int = 0
    bytes_freed: int = 0
    notes: list[str] = field(default_factory=list)


def stamp_path(settings: Settings) -> Path:
    return settings.state_dir / "local" / "gc-stamp"


def due(settings: Settings, now: float) -> bool:
    """Whether the automatic collection should run now (one ``stat``; the path is joined as text:
    three ``Path`` joins cost more than the ``stat`` itself)."""
    if settings.gc_every_s <= 0:
        return False
    try:
        return now - os.stat(os.path.join(settings.state_dir, "local", "gc-stamp")).st_mtime >= settings.gc_every_s
    except FileNotFoundError:
        return True


def _touch_stamp(settings: Settings) -> None:
    stamp = stamp_path(settings)
    try:
        os.utime(stamp)
    except FileNotFoundError:
        os.makedirs(stamp.parent, mode=0o700, exist_ok=True)
        os.close(os.open(stamp, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))


def spawn_if_due(settings: Settings) -> None:
    """``sandpit exec``'s automatic collection: when due, start ``sandpit gc --auto`` detached (its
    own session, no terminal, stdio on /dev/null) and return at once; never fails the command."""
    if not due(settings, time.time()):
        return
    try:
        _touch_stamp(settings)  # before the spawn: the next exec does not start another
        devnull = os.devnull
        # -P: the current directory (a checkout that may hold a `worker/` of its own) is not on the path
        os.posix_spawn(sys.executable, [sys.executable, "-P", "-m", "worker", "gc", "--auto"], dict(os.environ),
                       file_actions=[(os.POSIX_SPAWN_OPEN, fd, devnull, os.O_RDWR, 0) for fd in (0, 1, 2)],
                       setsid=True)
    except OSError:
        return


def collect_if_due(settings: Settings) -> Collected | None:
    """``sandpit run``'s automatic collection, in the process, when due. A collection another
    process is running is waited for (they take a second or so), and then this one runs only if
    it is still due: the other may have started before this run's predecessors were recorded."""
    if not due(settings, time.time()):
        return None
    done = collect(settings, wait=True, only_if_due=True)
    if done is not None:
        import logging

        logging.getLogger("sandpit.retention").info(
            "retention: removed %d record(s), %d log(s), %d stored file(s), %d cache entries, %d dead run store(s)",
            done.records, done.logs, done.files, done.cache_entries, done.scratch)
    return done


def collect(settings: Settings, now: float | None = None, *,
            wait: bool = False, only_if_due: bool = False) -> Collected | None:
    """One collection (see the module's text). When another one is running: None at once, or
    (``wait``, as ``sandpit gc`` asks) after it ended, this one; ``only_if_due``: None unless it
    is still due once the lock is held."""
    from pipelines.files.locks import hold, try_hold

    now = time.time() if now is None else now
    local = settings.state_dir / "local"
    os.makedirs(local, mode=0o700, exist_ok=True)
    lock = hold(local / "gc.lock") if wait else try_hold(local / "gc.lock")
    if lock is None:
        return None
    with lock:
        if only_if_due and not due(settings, time.time()):
            return None
        _touch_stamp(settings)
        return _collect(settings, now)


def _collect(settings: Settings, now: float) -> Collected:
    from worker.local import cache as local_cache
    from worker.local import records as local_records
    from worker.sandbox import blobs

    done = Collected()
    store = settings.state_dir / "artifacts"
    logs_dir = settings.state_dir / "logs"
    records = local_records.read_records(settings.state_dir)
    keep = [r for r in records if now - r.created <= settings.retention_s]
    gone = [r for r in records if now - r.created > settings.retention_s]
    sizes = {r.id: _record_bytes(r, store, logs_dir) for r in keep}
    total = sum(sizes.values())
    while keep and total > settings.retention_bytes:
        oldest = keep.pop(0)
        total -= sizes[oldest.id]
        gone.append(oldest)
    if gone:
        done.notes.append(f"{len(gone)} record(s) past SANDPIT_RETENTION ({_age(settings.retention_s)}) "
                          f"or SANDPIT_RETENTION_SIZE ({settings.retention_bytes} bytes)")
    candidates: set[str] = set()
    for rec in gone:
        local_records.remove_record(rec)  # first: from now on nothing counts it as naming its files
        done.records += 1
        for name in rec.logs:
            freed = _unlink_in(logs_dir, name)
            if freed is not None:
                done.logs += 1
                done.bytes_freed += freed
        candidates |= rec.stored
    entries = local_cache.all_entries(settings.state_dir)
    cache_total = sum(e.size for e in entries)
    while entries and cache_total > settings.cache_bytes:
        evicted = entries.pop(0)
        cache_total -= evicted.size
        try:
            os.unlink(evicted.path)
        except FileNotFoundError:
            continue
        done.cache_entries += 1
        candidates |= {evicted.sha256} | local_cache.manifest_files(store, evicted.sha256)
    if candidates:
        named: set[str] = set()
        for rec in keep:
            named |= rec.stored
        for entry in entries:
            named |= {entry.sha256} | local_cache.manifest_files(store, entry.sha256)
        service = _service_references(settings)
        for sha in sorted(candidates):
            size = _size(blobs.blob_path(store, sha))

            def still_named(sha: str = sha) -> bool:
                return sha in named or service(sha)

            if blobs.remove_if_unused(store, sha, still_named):
                done.files += 1
                done.bytes_freed += size
    done.scratch = _dead_scratch(settings.state_dir / "local", now)
    folders = [local_records.records_dir(settings.state_dir)]
    folders += [Path(e.path).parent for e in entries]
    for folder in {*folders}:
        done.records += _leftover_writes(folder, now, settings.retention_s)
    return done


def _leftover_writes(folder: Path, now: float, retention_s: float) -> int:
    """Remove what a writer killed mid-write left in ``folder``: its unique temporaries (after an
    hour) and files that cannot be read as a record (after the retention age); how many."""
    from worker.local.records import read_record_file

    removed = 0
    try:
        items = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for item in items:
        if not item.is_file(follow_symlinks=False):
            continue
        age = now - item.stat(follow_symlinks=False).st_mtime
        torn = item.name.startswith(".tmp-") and age > 3600
        unreadable = (item.name.endswith(".json") and age > retention_s and folder.name == "records"
                      and read_record_file(Path(item.path)) is None)
        if torn or unreadable:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(item.path)
            removed += 1
    return removed


def _record_bytes(rec: LocalRecord, store: Path, logs_dir: Path) -> int:
    from worker.sandbox import blobs

    logs = sum(_size(logs_dir / name) for name in rec.logs)
    return logs + sum(_size(blobs.blob_path(store, sha)) for sha in rec.stored)


def _size(path: Path) -> int:
    try:
        return os.stat(path, follow_symlinks=False).st_size
    except OSError:
        return 0


def _unlink_in(folder: Path, name: str) -> int | None:
    """Remove ``folder/name`` (a checked file name) without following a symlink; its size, or None."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        size = os.stat(name, dir_fd=fd, follow_symlinks=False).st_size
        os.unlink(name, dir_fd=fd)
        return size
    except OSError:
        return None
    finally:
        os.close(fd)


def _service_references(settings: Settings) -> Callable[[str], bool]:
    """Whether the service's database names a stored file; where there is a database that cannot
    be asked, every file counts as named (kept)."""
    url = settings.database_url
    if not url:
        default = settings.state_dir / "sandpit.db"
        if not default.exists():
            return lambda _sha: False
        url = f"sqlite:///{default}"
    try:
        from pipelines.store.db import make_engine, session_scope
        from pipelines.store.retention import blob_referenced

        db = make_engine(url)
    except Exception:
        return lambda _sha: True

    def referenced(sha: str) -> bool:
        try:
            with session_scope(db) as s:
                return blob_referenced(s, sha)
        except Exception:
            return True

    return referenced


def _dead_scratch(local: Path, now: float) -> int:
    """Remove private stores of local runs whose process is gone (nothing in them moved for a day:
    a live run renews its job leases in its store every second)."""
    import shutil

    removed = 0
    for item in os.scandir(local):
        if not item.name.startswith("run-") or not item.is_dir(follow_symlinks=False):
            continue
        newest = max([_mtime(item.path)] + [_mtime(os.path.join(item.path, n))
                                             for n in ("run.db", "run.db-wal", "run.db-journal")])
        if now - newest > SCRATCH_IDLE_S:
            shutil.rmtree(item.path, ignore_errors=True)  # fd-based: never follows a symlink inside
            removed += 1
    return removed


def _mtime(path: str) -> float:
    try:
        return os.stat(path, follow_symlinks=False).st_mtime
    except OSError:
        return 0.0


def _age(seconds: float) -> str:
    return f"{seconds / 86400:g}d" if seconds >= 86400 else f"{seconds:g}s"
