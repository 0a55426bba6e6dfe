"""``cache:`` between jobs: files named by a cache's paths are saved after a job and restored before
the next one with the same key.

A cache is a manifest (JSON list of ``{path, size, sha256}``) stored, like the files themselves, in
the content-addressed artifact store (:mod:`worker.sandbox.blobs`: a unique temporary per write,
hashed as written, never rewriting a stored file). Saving reuses the artifact walk (never follows a
symlink, never leaves the workspace); restoring checks the manifest and every file against their
sha256 before using them (a torn or tampered stored file is skipped, not fed to a job) and places
files with ``seed.place_file`` (never through a symlink, never outside the workspace), so a
poisoned cache cannot write anywhere else. Entries are keyed by (key, trust): caches written by
untrusted runs never feed trusted runs, nor the reverse.

The key is never part of a host path: it is a database key. A key that fails the cache-key
grammar (``pipelines.identifiers``; the language refuses such keys up front) is stored under a
hash of itself. ``key: files:`` names files of the source tree; each is read relative to a
directory fd of the source root with every component opened ``O_NOFOLLOW``, regular files only,
so ``key: {files: [../../etc/shadow]}`` or a symlink to ``/dev/zero`` reads nothing of the host.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session

from pipelines.identifiers import artifact_path_problem, cache_key_problem, is_sha256_hex
from pipelines.job_record import StoredArtifact
from pipelines.language.model import Cache
from pipelines.store.retention import cache_lookup, cache_store
from worker.errors import SandboxError
from worker.sandbox import blobs
from worker.sandbox.artifacts import artifact_path, match_path

log = logging.getLogger("sandpit.worker")

MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_KEY_FILE_BYTES = 64 * 1024 * 1024  # a lock file is kilobytes; past this the key says "too large"
_HASHED_KEY = "~sha256-"


def cache_key(cache: Cache, source_root: Path | None) -> str:
    """The cache's key; with ``key: files`` the sha256 of those files' contents (with the prefix).

    >>> cache_key(Cache(key="deps-v1"), None), cache_key(Cache(key="a/../b"), None)[:12]
    ('deps-v1', '~sha256-900e')
    """
    if cache.key_files:
        digest = hashlib.sha256()
        for name in sorted(cache.key_files):
            digest.update(name.encode() + b"\0")
            if source_root is not None:
                _hash_source_file(digest, source_root, name)
        key = digest.hexdigest()[:40]
        key = f"{cache.key_prefix}-{key}" if cache.key_prefix else key
    else:
        key = cache.key
    if cache_key_problem(key) is not None:
        return _HASHED_KEY + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
    return key


def _hash_source_file(digest: hashlib._Hash, root: Path, name: str) -> None:
    """Feed ``root/name`` into ``digest`` without following a symlink or leaving ``root``; what
    cannot be read so adds a marker instead (so the key still changes when the file appears)."""
    if artifact_path_problem(name) is not None:
        digest.update(b"<refused>")
        return
    parts = name.split("/")
    dir_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(root, dir_flags)
    except OSError:
        digest.update(b"<missing>")
        return
    try:
        for part in parts[:-1]:
            sub = os.open(part, dir_flags, dir_fd=fd)
            os.close(fd)
            fd = sub
        st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            digest.update(b"<symlink>" + os.readlink(parts[-1], dir_fd=fd).encode("utf-8", "surrogateescape"))
            return
        if not stat.S_ISREG(st.st_mode):
            digest.update(b"<not a file>")
            return
        file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        try:
            if not stat.S_ISREG(os.fstat(file_fd).st_mode):
                digest.update(b"<not a file>")
                return
            read = 0
            while chunk := os.read(file_fd, 1 << 20):
                read += len(chunk)
                if read > MAX_KEY_FILE_BYTES:
                    digest.update(b"<too large>")
                    return
                digest.update(chunk)
        finally:
            os.close(file_fd)
    except OSError:
        digest.update(b"<missing>")
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def entries(session: Session, caches: tuple[Cache, ...], trust: str,
            source_root: Path | None) -> tuple[tuple[str, str], ...]:
    """(key, manifest sha256) of every cache this job pulls that exists at its trust level: the
    database part of a restore, so that no file is read inside the transaction."""
    found = []
    for cache in caches:
        if cache.policy not in ("pull", "pull-push"):
            continue
        key = cache_key(cache, source_root)
        entry = cache_lookup(session, key, trust)  # type: ignore[arg-type]
        if entry is not None:
            found.append((key, entry.sha256))
    return tuple(found)


def restore(store: Path, found: tuple[tuple[str, str], ...]) -> tuple[tuple[str, Path], ...]:
    """(path in workspace, stored file) for every file of the caches ``entries`` found, each cache
    whole or not at all: one of its files missing or not matching its sha256 makes that cache a
    miss (logged), never a half-restored tree (half a ``node_modules`` fails later and worse)."""
    files: dict[str, Path] = {}
    for key, manifest_sha in found:
        mine: dict[str, Path] = {}
        broken = 0
        for item in manifest_items(store, manifest_sha):
            path = item.get("path")
            sha = item.get("sha256")
            if not isinstance(path, str) or not isinstance(sha, str) or len(sha) != 64:
                broken += 1
                continue
            if artifact_path_problem(path) is not None:
                broken += 1  # never outside the workspace, whatever the manifest says
                continue
            stored = artifact_path(store, sha)
            if blobs.intact(stored, sha):
                mine[path] = stored
            else:
                broken += 1
                if stored.exists():
                    log.error("cache %s: stored file %s does not match its sha256", key, stored)
        if broken:
            log.error("cache %s: %d of its files are missing or damaged; the cache is not restored", key, broken)
            continue
        files.update(mine)
    return tuple(files.items())


def manifest_items(store: Path, sha: str) -> list[dict[str, object]]:
    """The entries of the stored manifest ``sha``; none when it is missing, torn or not a manifest."""
    path = artifact_path(store, sha)
    if not blobs.intact(path, sha):
        if path.exists():
            log.error("cache manifest %s does not match its sha256; the cache is not restored", path)
        return []
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            return []
        data = json.loads(raw)
    except (OSError, ValueError):
        return []
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def cache_paths(caches: tuple[Cache, ...]) -> tuple[str, ...]:
    return tuple(p for c in caches if c.policy in ("push", "pull-push") for p in c.paths)


@dataclass(frozen=True, slots=True)
class SavedCache:
    """A cache manifest stored (in the local store) and not yet named by the database."""

    key: str
    sha256: str
    size: int
    members: tuple[str, ...] = ()  # the stored files it lists (empty: read from the manifest)


def store_manifests(caches: tuple[Cache, ...], store: Path, files: Sequence[StoredArtifact], job_status: str,
                    source_root: Path | None) -> list[SavedCache]:
    """Store a manifest per pushed cache whose ``when`` matches the job's outcome (files only: a
    worker that shares no disk with the API delivers them before :func:`record_caches` names them)."""
    saved = []
    for cache in caches:
        if cache.policy not in ("push", "pull-push"):
            continue
        wanted = {"on_success": job_status == "succeeded", "on_failure": job_status != "succeeded",
                  "always": True}.get(cache.when, False)
        if not wanted:
            continue
        mine = [f for f in files if any(match_path(p, f.path) for p in cache.paths)]
        manifest = json.dumps([f.as_dict() for f in mine], sort_keys=True).encode()
        key = cache_key(cache, source_root)
        try:
            sha = blobs.store_bytes(store, manifest)
        except SandboxError as exc:  # a cache is an optimisation: losing one never fails the job
            log.error("cache %s not saved: %s", key, exc)
            continue
        saved.append(SavedCache(key, sha, sum(f.size for f in mine), tuple(f.sha256 for f in mine)))
    return saved


def record_caches(session: Session, saved: Sequence[SavedCache], trust: str, now: dt.datetime,
                  store: Path | None = None) -> list[str]:
    """Point each cache's key (at ``trust``) at its new manifest, with the files it lists (from
    ``store`` when the entry does not carry them: an outbox replay); returns the keys."""
    for entry in saved:
        members = entry.members
        if not members and store is not None:
            listed = manifest_items(store, entry.sha256)
            members = tuple(str(i["sha256"]) for i in listed if is_sha256_hex(i.get("sha256")))
        cache_store(session, entry.key, trust, entry.sha256, entry.size, now, members)  # type: ignore[arg-type]
    return [entry.key for entry in saved]


def save(session: Session, caches: tuple[Cache, ...], trust: str, store: Path, files: Sequence[StoredArtifact],
         job_status: str, source_root: Path | None, now: dt.datetime) -> list[str]:
    """Store a manifest per pushed cache whose ``when`` matches the job's outcome; returns the keys."""
    return record_caches(session, store_manifests(caches, store, files, job_status, source_root), trust, now)
