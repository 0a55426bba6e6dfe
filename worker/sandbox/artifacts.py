"""Collecting a job's artifacts from its workspace, safely, after every process of it is dead.

The walk opens every directory relative to its parent's fd with O_NOFOLLOW, so a symlink the
job planted is never followed (it is reported in ``rejected`` instead), it can never leave the
workspace, and a symlink loop cannot trap it. Files are copied into a content-addressed store
(``<store>/<sha256[:2]>/<sha256>``) with size and count caps.

Pattern syntax (GitLab's ``artifacts:paths``): relative globs, ``*``/``?``/``[...]`` within one
path segment, ``**`` for any number of segments; a pattern naming a directory takes the whole
tree under it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import stat
from dataclasses import dataclass
from pathlib import Path

MAX_ENTRIES = 200_000
MAX_DEPTH = 64
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Artifact:
    path: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, object]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Rejected:
    path: str
    why: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "why": self.why}


@dataclass(frozen=True)
class Caps:
    file_bytes: int
    count: int
    total_bytes: int


def match_path(pattern: str, path: str) -> bool:
    """Whether the relative ``path`` is named by ``pattern`` (itself, or a directory above it).

    >>> match_path("dist/*.tar", "dist/app.tar"), match_path("dist", "dist/a/b"), match_path("**/*.xml", "x.xml")
    (True, True, True)
    """
    pat = [p for p in pattern.strip("/").split("/") if p not in ("", ".")]
    parts = path.split("/")
    return _match(pat, parts, prefix_ok=True)


def _match(pat: list[str], parts: list[str], prefix_ok: bool) -> bool:
    if not pat:
        return prefix_ok or not parts
    if pat[0] == "**":
        return any(_match(pat[1:], parts[i:], prefix_ok) for i in range(len(parts) + 1))
    if not parts:
        return False
    return fnmatch.fnmatchcase(parts[0], pat[0]) and _match(pat[1:], parts[1:], prefix_ok)


def collect_artifacts(workspace: Path, patterns: tuple[str, ...], store: Path,
                      caps: Caps) -> tuple[list[Artifact], list[Rejected]]:
    """Copy every regular file named by ``patterns`` into ``store``; report what was refused."""
    if not patterns:
        return [], []
    store.mkdir(parents=True, exist_ok=True)
    kept: list[Artifact] = []
    rejected: list[Rejected] = []
    total = 0
    seen = 0
    root_fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    stack: list[tuple[int, str, int]] = [(root_fd, "", 0)]
    try:
        while stack:
            dir_fd, rel_dir, depth = stack.pop()
            try:
                with os.scandir(dir_fd) as it:
                    entries = sorted(it, key=lambda e: e.name)
                for entry in entries:
                    seen += 1
                    if seen > MAX_ENTRIES:
                        rejected.append(Rejected(rel_dir or ".", f"walk stopped after {MAX_ENTRIES} entries"))
                        return kept, rejected
                    rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                    shown = _printable(rel)
                    named = any(match_path(p, rel) for p in patterns)
                    if entry.is_symlink():
                        if named:
                            rejected.append(Rejected(shown, "symlink"))
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        if depth + 1 > MAX_DEPTH:
                            if named or _could_match(patterns, rel):
                                rejected.append(Rejected(shown, "too deep"))
                            continue
                        if named or _could_match(patterns, rel):
                            try:
                                sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                              | os.O_CLOEXEC, dir_fd=dir_fd)
                            except OSError as exc:
                                rejected.append(Rejected(shown, f"unreadable directory ({exc.strerror})"))
                                continue
                            stack.append((sub, rel, depth + 1))
                        continue
                    if not named:
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        rejected.append(Rejected(shown, "not a regular file"))
                        continue
                    if shown != rel:
                        rejected.append(Rejected(shown, "file name is not valid UTF-8"))
                        continue
                    if len(kept) >= caps.count:
                        rejected.append(Rejected(rel, f"artifact count limit ({caps.count}) reached"))
                        continue
                    art, why = _copy_one(dir_fd, entry.name, rel, store, caps, total)
                    if art is None:
                        rejected.append(Rejected(rel, why))
                    else:
                        kept.append(art)
                        total += art.size
            finally:
                os.close(dir_fd)
    finally:
        for fd, _rel, _depth in stack:
            with contextlib.suppress(OSError):
                os.close(fd)
    return kept, rejected


def _could_match(patterns: tuple[str, ...], rel_dir: str) -> bool:
    """Whether some file below ``rel_dir`` could be named by a pattern (prunes the walk)."""
    parts = rel_dir.split("/")
    for pattern in patterns:
        pat = [p for p in pattern.strip("/").split("/") if p not in ("", ".")]
        if _prefix_match(pat, parts):
            return True
    return False


def _prefix_match(pat: list[str], parts: list[str]) -> bool:
    if not parts:
        return True
    if not pat:
        return True  # the directory itself was named
    if pat[0] == "**":
        return True
    return fnmatch.fnmatchcase(parts[0], pat[0]) and _prefix_match(pat[1:], parts[1:])


def _copy_one(dir_fd: int, name: str, rel: str, store: Path, caps: Caps,
              total: int) -> tuple[Artifact | None, str]:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        return None, f"unreadable ({exc.strerror})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file"
        if st.st_size > caps.file_bytes:
            return None, f"file larger than the {caps.file_bytes}-byte cap"
        if total + st.st_size > caps.total_bytes:
            return None, f"total artifact size cap ({caps.total_bytes} bytes) reached"
        tmp = store / f".tmp-{os.getpid()}-{abs(hash(rel))}"
        import hashlib

        digest = hashlib.sha256()
        size = 0
        with open(tmp, "wb") as out:
            while size <= caps.file_bytes:
                chunk = os.read(fd, _CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        if size > caps.file_bytes:
            tmp.unlink()
            return None, f"file larger than the {caps.file_bytes}-byte cap"
        sha = digest.hexdigest()
        dest = store / sha[:2] / sha
        dest.parent.mkdir(exist_ok=True)
        os.replace(tmp, dest)
        return Artifact(path=rel, size=size, sha256=sha), ""
    finally:
        os.close(fd)


def _printable(rel: str) -> str:
    """The name as valid UTF-8 text (undecodable bytes shown as escapes)."""
    raw = os.fsencode(rel)
    return raw.decode("utf-8", "backslashreplace")


def artifact_path(store: Path, sha256: str) -> Path:
    return store / sha256[:2] / sha256
