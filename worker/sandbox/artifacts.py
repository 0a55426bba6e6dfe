"""Collecting a job's artifacts from its workspace, safely, after every process of it is dead.

The walk opens every directory relative to its parent's fd with O_NOFOLLOW, so a symlink the
job planted is never followed (it is reported in ``rejected`` instead), it can never leave the
workspace, and a symlink loop cannot trap it. Files are copied into the content-addressed store
(``<store>/<sha256[:2]>/<sha256>``, :mod:`worker.sandbox.blobs`: a unique temporary per write,
hashed as written, never rewriting a stored file) with size and count caps, and with host memory
bounded however many entries a directory holds.

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

from pipelines.job_record import RefusedArtifact, StoredArtifact
from worker.sandbox import blobs

MAX_ENTRIES = 200_000  # entries examined per walk, kept or not
MAX_DEPTH = 64
MAX_REJECTED = 200  # refusals listed in the job's record; more are counted in one line


@dataclass(frozen=True)
class Caps:
    file_bytes: int
    count: int
    total_bytes: int
    entries: int = MAX_ENTRIES


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
                      caps: Caps, exclude: tuple[str, ...] = ()) -> tuple[list[StoredArtifact], list[RefusedArtifact]]:
    """Copy every regular file named by ``patterns`` and by no ``exclude`` pattern (GitLab's
    ``artifacts:exclude``: an excluded file is simply not kept; an excluded directory is not even
    entered) into ``store``; report what was refused.

    Host memory stays bounded however the workspace is shaped: directories are read entry by
    entry (``os.scandir``, never a whole listing; so files come in directory order, not sorted),
    the walk is depth-first with one open directory per level (at most ``MAX_DEPTH``), it stops
    after ``caps.entries`` entries *examined* (kept or not), and at most ``MAX_REJECTED`` refusals
    are listed (then one line counts the rest). A 400,000-entry directory once cost 114 MB here
    when it was read whole and sorted before any cap applied.
    """
    if not patterns:
        return [], []
    kept: list[StoredArtifact] = []
    refusals = _Refusals()
    total = 0
    seen = 0
    root_fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    stack: list[_Dir] = []
    try:
        stack.append(_Dir(root_fd, "", 0))
        while stack:
            here = stack[-1]
            entry = next(here.entries, None)
            if entry is None:
                stack.pop().close()
                continue
            seen += 1
            if seen > caps.entries:
                refusals.add(RefusedArtifact(_printable(here.rel or "."),
                                      f"walk stopped: the cap of {caps.entries} entries examined was "
                                      "reached; later files were not collected"), always=True)
                break
            rel = f"{here.rel}/{entry.name}" if here.rel else entry.name
            if exclude and any(match_path(x, rel) for x in exclude):
                continue
            named = any(match_path(p, rel) for p in patterns)
            # the job is dead, so nothing swaps an entry between this check and the O_NOFOLLOW
            # opens below; the opens refuse symlinks anyway
            if entry.is_symlink():
                if named:
                    refusals.add(RefusedArtifact(_printable(rel), "symlink"))
                continue
            if entry.is_dir(follow_symlinks=False):
                if not (named or _could_match(patterns, rel)):
                    continue
                if here.depth + 1 > MAX_DEPTH:
                    refusals.add(RefusedArtifact(_printable(rel), "too deep"))
                    continue
                try:
                    stack.append(_Dir(os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                              | os.O_CLOEXEC, dir_fd=here.fd), rel, here.depth + 1))
                except OSError as exc:
                    refusals.add(RefusedArtifact(_printable(rel), f"unreadable directory ({exc.strerror})"))
                continue
            if not named:
                continue
            shown = _printable(rel)
            if not entry.is_file(follow_symlinks=False):
                refusals.add(RefusedArtifact(shown, "not a regular file"))
                continue
            if shown != rel:
                refusals.add(RefusedArtifact(shown, "file name is not valid UTF-8"))
                continue
            if len(kept) >= caps.count:
                refusals.add(RefusedArtifact(rel, f"artifact count limit ({caps.count}) reached"))
                continue
            art, why = _copy_one(here.fd, entry.name, rel, store, caps, total)
            if art is None:
                refusals.add(RefusedArtifact(rel, why))
            else:
                kept.append(art)
                total += art.size
    finally:
        for d in stack:
            d.close()
    return kept, refusals.listed()


class _Dir:
    """One directory of the walk: its fd and its entries, read lazily."""

    def __init__(self, fd: int, rel: str, depth: int) -> None:
        self.fd, self.rel, self.depth = fd, rel, depth
        try:
            self._scan = os.scandir(fd)  # reads the fd's directory a few entries at a time
        except OSError:
            os.close(fd)
            raise
        self.entries = iter(self._scan)

    def close(self) -> None:
        self._scan.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)


class _Refusals:
    """The refused entries, at most ``MAX_REJECTED`` listed; the rest only counted."""

    def __init__(self) -> None:
        self.items: list[RefusedArtifact] = []
        self.unlisted = 0

    def add(self, item: RefusedArtifact, always: bool = False) -> None:
        if len(self.items) < MAX_REJECTED or always:
            self.items.append(item)
        else:
            self.unlisted += 1

    def listed(self) -> list[RefusedArtifact]:
        if not self.unlisted:
            return self.items
        return [*self.items, RefusedArtifact("...", f"{self.unlisted} more refused entries not listed "
                                             f"(at most {MAX_REJECTED} are)")]


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
              total: int) -> tuple[StoredArtifact | None, str]:
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
        # the limit is what may still be read: a sparse or growing file is bounded while copying
        limit = min(caps.file_bytes, caps.total_bytes - total)
        try:
            sha, size = blobs.store_fd(store, fd, limit)
        except blobs.BlobTooLarge:
            if limit < caps.file_bytes:
                return None, f"total artifact size cap ({caps.total_bytes} bytes) reached"
            return None, f"file larger than the {caps.file_bytes}-byte cap"
        except blobs.SourceUnreadable as exc:
            return None, f"unreadable ({exc})"
        return StoredArtifact(path=rel, size=size, sha256=sha), ""
    finally:
        os.close(fd)


def _printable(rel: str) -> str:
    """The name as valid UTF-8 text (undecodable bytes shown as escapes)."""
    raw = os.fsencode(rel)
    return raw.decode("utf-8", "backslashreplace")


def artifact_path(store: Path, sha256: str) -> Path:
    return blobs.blob_path(store, sha256)
