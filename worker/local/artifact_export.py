"""Copying kept artifacts out of the content-addressed store into a folder (adapter): ``sandpit artifacts``.

The store stays the truth: each file is copied from its stored bytes, hashed while it is copied and
checked against the recorded sha256 (a torn or tampered stored file is not written out). Inside the
destination folder nothing is followed: every directory on the way is made or opened relative to
its parent's fd with ``O_NOFOLLOW``, so a symlink already there (``out/dist -> /etc``, made by
anyone) is refused, never written through. A file is written to a unique temporary beside its
final name and then linked (no overwrite: ``link`` fails on an existing name, atomically) or, with
``force``, renamed over it (``rename`` replaces a symlink itself, never its target). Before anything
is written every file is checked, so a refusal writes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from pipelines.identifiers import artifact_path_problem
from worker.local.records import KeptFile
from worker.sandbox import blobs

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
CHUNK = 1 << 20


class ExportRefused(Exception):
    """Nothing was written; the message lists every reason."""


def plan_export(store: Path, files: Iterable[KeptFile], dest: Path, force: bool) -> list[KeptFile]:
    """The files to write (one per path), or :class:`ExportRefused` naming every problem: a path
    two jobs kept with different contents, a stored file that is gone or damaged, a file in the way
    (without ``force``), a symlink or non-directory on the way."""
    by_path: dict[str, KeptFile] = {}
    problems = []
    for f in files:
        if artifact_path_problem(f.path) is not None:
            problems.append(f"{f.path!r}: not a workspace path")
            continue
        seen = by_path.get(f.path)
        if seen is not None and seen.sha256 != f.sha256:
            problems.append(f"{f.path}: two jobs kept different files at this path (export one job at a time)")
        by_path[f.path] = f
    for f in by_path.values():
        if not blobs.intact(blobs.blob_path(store, f.sha256), f.sha256):
            problems.append(f"{f.path}: its stored content is gone or does not match its sha256 {f.sha256[:12]}")
        problems += _in_the_way(dest, f.path, force)
    if problems:
        more = f"; and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ExportRefused("; ".join(problems[:20]) + more)
    return sorted(by_path.values(), key=lambda f: f.path)


def _in_the_way(dest: Path, rel: str, force: bool) -> list[str]:
    parts = rel.split("/")
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    except OSError as exc:
        return [f"{dest}: {exc.strerror}"]
    try:
        for i, part in enumerate(parts):
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return []
            shown = "/".join(parts[: i + 1])
            last = i == len(parts) - 1
            if not last:
                if stat.S_ISLNK(st.st_mode):
                    return [f"{dest / shown}: a symlink is on the way (not followed)"]
                if not stat.S_ISDIR(st.st_mode):
                    return [f"{dest / shown}: not a directory"]
                sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = sub
            elif stat.S_ISDIR(st.st_mode):
                return [f"{dest / shown}: a directory is in the way"]
            elif not force:
                return [f"{dest / shown}: exists (use --force to replace it)"]
        return []
    finally:
        os.close(fd)


def export(store: Path, files: list[KeptFile], dest: Path, force: bool) -> list[Path]:
    """Write ``files`` (from :func:`plan_export`) under ``dest``; returns where each went."""
    os.makedirs(dest, exist_ok=True)
    top = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    written = []
    try:
        for f in files:
            parts = f.path.split("/")
            parent = _open_dirs(top, parts[:-1], dest, f.path)
            try:
                _write_one(store, f, parent, parts[-1], force)
            finally:
                os.close(parent)
            written.append(dest / f.path)
    finally:
        os.close(top)
    return written


def _open_dirs(top: int, parts: list[str], dest: Path, rel: str) -> int:
    fd = os.dup(top)
    try:
        for part in parts:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            try:
                sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise ExportRefused(f"{dest / rel}: {part} is not a plain directory (not followed)") from exc
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_one(store: Path, f: KeptFile, parent: int, leaf: str, force: bool) -> None:
    temp = f".sandpit-{secrets.token_hex(8)}"
    src = os.open(blobs.blob_path(store, f.sha256), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=parent)
        try:
            digest = hashlib.sha256()
            while chunk := os.read(src, CHUNK):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
        finally:
            os.close(out)
        if digest.hexdigest() != f.sha256:
            raise ExportRefused(f"{f.path}: its stored content changed while it was copied (not written)")
        if force:
            os.replace(temp, leaf, src_dir_fd=parent, dst_dir_fd=parent)
        else:
            try:
                os.link(temp, leaf, src_dir_fd=parent, dst_dir_fd=parent, follow_symlinks=False)
            except FileExistsError:
                raise ExportRefused(f"{f.path}: appeared while it was being written (use --force)") from None
            os.unlink(temp, dir_fd=parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=parent)
        raise
    finally:
        os.close(src)
