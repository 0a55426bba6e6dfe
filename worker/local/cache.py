"""``cache:`` that outlives one ``sandpit run``: a per-repository index of cache entries (adapter).

A local run works in a private store that is deleted when it ends, so the entries :mod:`worker.cache`
writes there (key and trust → manifest sha256) would go with it. This index keeps them: before the
run starts, every entry its jobs pull is put into the run's store (``cache_store``, the store's own
write path, so the executor restores it exactly as the service does); after it ends, every entry its
jobs pushed is read back (``cache_lookup``) and kept here. The files themselves stay in the shared
content-addressed store (:mod:`worker.sandbox.blobs`), packed by the artifact walk (which never
follows a symlink a job planted and never leaves the workspace) and unpacked by ``seed.place_file``
(never through a symlink, never outside the workspace), each checked against its sha256 first.

Layout: ``<state>/local/cache/<repository>/<entry>.json``; ``repository`` is a hash of the work
tree's real path (the same repository, wherever it is run from), ``entry`` a hash of (trust, key),
so no key (a job's text) ever becomes part of a path. An entry is written once through a unique
temporary and a rename (a concurrent run sees the old entry or the new one, whole); its mtime is
its last use, which is what least-recently-used eviction (:mod:`worker.local.retention`) sorts by.
Entries of untrusted runs (``--policy untrusted``) never feed trusted ones, nor the reverse: the
trust level is part of the entry's name and of the lookup, as in the service's store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine as DbEngine

from pipelines.identifiers import is_sha256_hex
from pipelines.language.model import Plan
from pipelines.store.db import session_scope
from pipelines.store.retention import cache_lookup, cache_store
from worker import cache
from worker.local.records import read_small_json
from worker.sandbox import blobs

log = logging.getLogger("sandpit.cache")

MAX_ENTRY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class IndexEntry:
    key: str
    trust: str
    sha256: str  # the manifest's
    size: int  # bytes of the files it names
    used: float  # mtime: last use
    path: Path


def cache_root(state_dir: Path) -> Path:
    return state_dir / "local" / "cache"


def repository_dir(state_dir: Path, root: Path) -> Path:
    """The index of the repository whose work tree is ``root``.

    >>> repository_dir(Path("/s"), Path("/")).parent
    PosixPath('/s/local/cache')
    """
    real = os.path.realpath(root)
    return cache_root(state_dir) / hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _entry_name(key: str, trust: str) -> str:
    return hashlib.sha256(f"{trust}\0{key}".encode("utf-8", "surrogateescape")).hexdigest()[:40] + ".json"


def keys_of(planned: Plan, root: Path, policies: tuple[str, ...]) -> set[str]:
    """The keys of every cache of the plan whose policy is one of ``policies``."""
    return {cache.cache_key(c, root) for job in planned.jobs for c in job.caches if c.policy in policies}


def load_into_run(db: DbEngine, store: Path, folder: Path, keys: set[str], trust: str) -> dict[str, str]:
    """Put this repository's entries for ``keys`` (at ``trust``) into the run's store; each is
    touched (it is being used). Returns key → manifest sha256 of what was put in."""
    loaded: dict[str, str] = {}
    now = dt.datetime.now(dt.UTC)
    for key in sorted(keys):
        entry = read_entry(folder / _entry_name(key, trust))
        if entry is None or entry.key != key or entry.trust != trust:
            continue
        if not blobs.intact(blobs.blob_path(store, entry.sha256), entry.sha256):
            log.info("cache %s: its manifest is no longer stored; starting without it", key)
            continue
        with session_scope(db) as s:
            cache_store(s, key, trust, entry.sha256, entry.size, now)  # type: ignore[arg-type]
        loaded[key] = entry.sha256
        with contextlib.suppress(OSError):
            os.utime(entry.path, follow_symlinks=False)
    return loaded


def keep_from_run(db: DbEngine, folder: Path, keys: set[str], trust: str, loaded: dict[str, str]) -> list[str]:
    """Keep every entry of ``keys`` the run wrote (one that differs from what it was given);
    returns the keys kept."""
    kept = []
    for key in sorted(keys):
        with session_scope(db) as s:
            row = cache_lookup(s, key, trust)  # type: ignore[arg-type]
            found = None if row is None else (row.sha256, int(row.size or 0))
        if found is None or loaded.get(key) == found[0] or not is_sha256_hex(found[0]):
            continue
        write_entry(folder, key, trust, found[0], found[1])
        kept.append(key)
    return kept


def write_entry(folder: Path, key: str, trust: str, sha256: str, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = json.dumps({"key": key, "trust": trust, "sha256": sha256, "size": size}).encode()
    temp = folder / f".tmp-{secrets.token_hex(8)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    final = folder / _entry_name(key, trust)
    os.replace(temp, final)
    return final


def read_entry(path: Path) -> IndexEntry | None:
    read = read_small_json(path, MAX_ENTRY_BYTES)
    if read is None:
        return None
    data, used = read
    if not isinstance(data, dict) or not is_sha256_hex(data.get("sha256")):
        return None
    key, trust, size = data.get("key"), data.get("trust"), data.get("size")
    if not isinstance(key, str) or trust not in ("trusted", "untrusted") or not isinstance(size, int):
        return None
    return IndexEntry(key, str(trust), str(data["sha256"]), size, used, path)


def all_entries(state_dir: Path) -> list[IndexEntry]:
    """Every entry of every repository, least recently used first."""
    found = []
    root = cache_root(state_dir)
    try:
        repos = [r for r in os.scandir(root) if r.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    for repo in repos:
        for item in os.scandir(repo.path):
            if item.name.endswith(".json") and not item.name.startswith("."):
                entry = read_entry(Path(item.path))
                if entry is not None:
                    found.append(entry)
    return sorted(found, key=lambda e: e.used)


def manifest_files(store: Path, sha256: str) -> set[str]:
    """The sha256 of every file the manifest ``sha256`` names (none when it is not intact)."""
    return {str(item["sha256"]) for item in cache.manifest_items(store, sha256)
            if is_sha256_hex(item.get("sha256"))}

