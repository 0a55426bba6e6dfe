"""``cache:`` between jobs: files named by a cache's paths are saved after a job and restored before
the next one with the same key.

A cache is a manifest (JSON list of ``{path, size, sha256}``) stored, like the files themselves, in
the content-addressed artifact store. Saving reuses the artifact walk (never follows a symlink,
never leaves the workspace); restoring places files with ``seed.place_file`` (never through a
symlink, never outside the workspace), so a poisoned cache cannot write anywhere else. Entries are
keyed by (key, trust): caches written by untrusted runs never feed trusted runs, nor the reverse.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

from sqlmodel import Session

from pipelines.language.model import Cache
from pipelines.store.retention import cache_lookup, cache_store
from worker.sandbox.artifacts import Artifact, artifact_path, match_path

MAX_MANIFEST_BYTES = 16 * 1024 * 1024


def cache_key(cache: Cache, source_root: Path | None) -> str:
    """The cache's key; with ``key: files`` the sha256 of those files' contents (with the prefix)."""
    if not cache.key_files:
        return cache.key
    digest = hashlib.sha256()
    for name in sorted(cache.key_files):
        digest.update(name.encode() + b"\0")
        if source_root is not None:
            try:
                digest.update((source_root / name).read_bytes())
            except OSError:
                digest.update(b"<missing>")
    key = digest.hexdigest()[:40]
    return f"{cache.key_prefix}-{key}" if cache.key_prefix else key


def restore(session: Session, caches: tuple[Cache, ...], trust: str, store: Path,
            source_root: Path | None) -> tuple[tuple[str, Path], ...]:
    """(path in workspace, stored file) for every file of every cache this job pulls."""
    files: dict[str, Path] = {}
    for cache in caches:
        if cache.policy not in ("pull", "pull-push"):
            continue
        entry = cache_lookup(session, cache_key(cache, source_root), trust)  # type: ignore[arg-type]
        if entry is None:
            continue
        for item in _manifest(store, entry.sha256):
            path = item.get("path")
            sha = item.get("sha256")
            if not isinstance(path, str) or not isinstance(sha, str) or len(sha) != 64:
                continue
            if path.startswith("/") or ".." in path.split("/"):
                continue  # never outside the workspace, whatever the manifest says
            stored = artifact_path(store, sha)
            if stored.is_file():
                files[path] = stored
    return tuple(files.items())


def _manifest(store: Path, sha: str) -> list[dict[str, object]]:
    try:
        raw = artifact_path(store, sha).read_bytes()[:MAX_MANIFEST_BYTES]
        data = json.loads(raw)
    except (OSError, ValueError):
        return []
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def cache_paths(caches: tuple[Cache, ...]) -> tuple[str, ...]:
    return tuple(p for c in caches if c.policy in ("push", "pull-push") for p in c.paths)


def save(session: Session, caches: tuple[Cache, ...], trust: str, store: Path, files: list[Artifact],
         job_status: str, source_root: Path | None, now: dt.datetime) -> list[str]:
    """Store a manifest per pushed cache whose ``when`` matches the job's outcome; returns the keys."""
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
        sha = hashlib.sha256(manifest).hexdigest()
        dest = artifact_path(store, sha)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".tmp-{os.getpid()}-{sha}")
        tmp.write_bytes(manifest)
        os.replace(tmp, dest)
        key = cache_key(cache, source_root)
        cache_store(session, key, trust, sha, sum(f.size for f in mine), now)  # type: ignore[arg-type]
        saved.append(key)
    return saved
