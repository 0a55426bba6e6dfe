"""A repository's commit fetched into a per-repository bare mirror, and its pipeline file read (adapter).

This is the seam a web-hook run gets its pipeline text through until the worker checks
commits out itself: :func:`read_pipeline_file` fetches one commit (``--depth=1``, no tags, no
submodules) into ``<root>/<repo id>.git`` and reads the first of the pipeline paths it has.

``git`` is hardened against the repository and its URL: only the ``git://``, ``http://`` and
``https://`` transports (``protocol.allow=never`` plus those three: no ``file://``, no ``ext::``
command transport, no ``ssh`` that would read the host's keys), no hooks
(``core.hooksPath=/dev/null``), no system or global configuration, no credential prompt or
helper (``GIT_TERMINAL_PROMPT=0``), no LFS smudge, a timeout on every call and a size cap on
the file read. One fetch at a time per mirror (an ``flock`` on the mirror's lock file); a
commit already in the mirror is not fetched again (a warm mirror costs one ``git cat-file
--batch`` process for the commit and the file).

::

    MirrorError                 the commit or its pipeline file could not be read
    ├── UnsupportedUrl          a clone URL whose transport is not allowed
    ├── FetchFailed             git could not fetch the commit (its stderr, shortened)
    └── PipelineFileMissing     none of the pipeline paths exists in the commit
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pipelines.files.locks import hold

ALLOWED_SCHEMES = ("git://", "http://", "https://")
FETCH_TIMEOUT_S = 120.0
READ_TIMEOUT_S = 15.0
MAX_PIPELINE_BYTES = 1024 * 1024
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_PATH = re.compile(r"[A-Za-z0-9._/-]{1,255}")
_HARDENING = (
    "-c", "protocol.allow=never", "-c", "protocol.git.allow=always", "-c", "protocol.http.allow=always",
    "-c", "protocol.https.allow=always", "-c", "core.hooksPath=/dev/null", "-c", "credential.helper=",
    "-c", "fetch.recurseSubmodules=false", "-c", "core.fsmonitor=false", "-c", "transfer.fsckObjects=true",
)


class MirrorError(Exception):
    """Root of the mirror's errors (the web-hook records the message as the verdict's reason)."""


class UnsupportedUrl(MirrorError):
    pass


class FetchFailed(MirrorError):
    pass


class PipelineFileMissing(MirrorError):
    pass


@dataclass(frozen=True, slots=True)
class PipelineFile:
    path: str
    text: str
    commit_message: str
    commit_author: str
    commit_timestamp: str


def check_clone_url(url: str) -> str:
    """``url`` if its transport is allowed, else :class:`UnsupportedUrl`.

    >>> check_clone_url("https://example.org/o/r.git")
    'https://example.org/o/r.git'
    """
    if not url.startswith(ALLOWED_SCHEMES) or any(c.isspace() or ord(c) < 32 for c in url):
        raise UnsupportedUrl(f"clone URL {url[:200]!r} is not git://, http:// or https:// (other transports, "
                             "file:// and ext:: among them, are refused)")
    return url


def read_pipeline_file(root: Path, repo_id: str, clone_url: str, sha: str, paths: Sequence[str]) -> PipelineFile:
    """The first of ``paths`` in commit ``sha`` of ``clone_url`` (fetched into the mirror if needed),
    with the commit's message, author and time."""
    check_clone_url(clone_url)
    if not _SHA.fullmatch(sha):
        raise FetchFailed(f"{sha[:80]!r} is not a commit id")
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", repo_id):
        raise ValueError(f"repository id {repo_id!r} cannot name a mirror")
    mirror = root / f"{repo_id}.git"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    with hold(root / f"{repo_id}.lock"):
        if not (mirror / "HEAD").exists():
            _git(["init", "--quiet", "--bare", str(mirror)], None, READ_TIMEOUT_S)
        wanted = [path for path in paths if _PATH.fullmatch(path) and ".." not in path.split("/")]
        commit, found = _read_objects(mirror, sha, wanted)
        if commit is None:
            done = _git(["fetch", "--quiet", "--depth=1", "--no-tags", "--no-write-fetch-head", clone_url, sha],
                        mirror, FETCH_TIMEOUT_S, check=False)
            if done.returncode != 0:
                raise FetchFailed(f"git fetch of {sha} from {clone_url} failed: {_short(done.stderr)}")
            commit, found = _read_objects(mirror, sha, wanted)
            if commit is None:
                raise FetchFailed(f"git fetch from {clone_url} did not bring commit {sha}")
        if found is None:
            raise PipelineFileMissing(f"commit {sha} has none of {', '.join(paths)}")
        author, stamp, message = _commit_fields(commit)
        return PipelineFile(found[0], found[1].decode("utf-8", "replace"), message, author, stamp)


def _read_objects(mirror: Path, sha: str, paths: Sequence[str]) -> tuple[bytes | None, tuple[str, bytes] | None]:
    """The commit object (None when the mirror lacks it) and the first of ``paths`` it holds, read
    by one ``git cat-file --batch`` (a warm mirror costs one process, not one per object)."""
    proc = subprocess.Popen([*_git_prefix(mirror), "cat-file", "--batch"], env=_git_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    timer = threading.Timer(READ_TIMEOUT_S, proc.kill)
    timer.start()
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("".join(f"{request}\n" for request in (f"{sha}^{{commit}}", *(f"{sha}:{p}" for p in paths)))
                         .encode())
        proc.stdin.close()
        commit = _next_object(proc.stdout, b"commit", MAX_PIPELINE_BYTES)
        if commit is None:
            return None, None
        for path in paths:
            blob = _next_object(proc.stdout, b"blob", MAX_PIPELINE_BYTES, path)
            if blob is not None:
                return commit, (path, blob)
        return commit, None
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _next_object(stream: IO[bytes], kind: bytes, cap: int, path: str | None = None) -> bytes | None:
    """The next object of the batch if it exists and is a ``kind`` (a directory named like the
    pipeline file is not the pipeline file), else None."""
    header = stream.readline()
    if not header:
        raise FetchFailed(f"git cat-file stopped early (over {READ_TIMEOUT_S:.0f}s?)")
    fields = header.split()
    if len(fields) != 3:  # "<name> missing" (or ambiguous)
        return None
    size = int(fields[2])
    if size > cap:
        raise PipelineFileMissing(f"{path or 'the commit'} is over {cap} bytes")
    data = stream.read(size)
    stream.read(1)  # the newline after each object
    return data if fields[1] == kind else None


def _commit_fields(commit: bytes) -> tuple[str, str, str]:
    """``Name <email>``, ISO 8601 time and message of a raw commit object."""
    head, _sep, message = commit.partition(b"\n\n")
    author, stamp = "", ""
    for line in head.split(b"\n"):
        if line.startswith(b"author "):
            match = re.fullmatch(rb"author (.*) (\d+) ([+-])(\d\d)(\d\d)", line)
            if match:
                who, seconds, sign, hours, minutes = match.groups()
                offset = dt.timedelta(hours=int(hours), minutes=int(minutes)) * (-1 if sign == b"-" else 1)
                author = who.decode("utf-8", "replace")
                stamp = dt.datetime.fromtimestamp(int(seconds), dt.timezone(offset)).isoformat()
            break
    return author, stamp, message.decode("utf-8", "replace").rstrip("\n")


def _git_env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent", "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false", "GIT_LFS_SKIP_SMUDGE": "1", "GIT_PROTOCOL_FROM_USER": "0", "LC_ALL": "C",
    }


def _git_prefix(mirror: Path | None) -> list[str]:
    return ["git", *_HARDENING] + (["--git-dir", str(mirror)] if mirror is not None else [])


def _git(
    args: list[str], mirror: Path | None, timeout: float, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run([*_git_prefix(mirror), *args], env=_git_env(), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, errors="replace")
    except subprocess.TimeoutExpired:
        raise FetchFailed(f"git {args[0]} took longer than {timeout:.0f}s") from None
    if check and done.returncode != 0:
        raise FetchFailed(f"git {args[0]} failed: {_short(done.stderr)}")
    return done


def _short(text: str) -> str:
    return " ".join(text.split())[:300] or "(no message)"
