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
commit already in the mirror is not fetched again (a warm mirror costs one ``cat-file``).

::

    MirrorError                 the commit or its pipeline file could not be read
    ├── UnsupportedUrl          a clone URL whose transport is not allowed
    ├── FetchFailed             git could not fetch the commit (its stderr, shortened)
    └── PipelineFileMissing     none of the pipeline paths exists in the commit
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
    lock_fd = os.open(root / f"{repo_id}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        if not (mirror / "HEAD").exists():
            _git(["init", "--quiet", "--bare", str(mirror)], None, READ_TIMEOUT_S)
        if _git(["cat-file", "-e", f"{sha}^{{commit}}"], mirror, READ_TIMEOUT_S, check=False).returncode != 0:
            done = _git(["fetch", "--quiet", "--depth=1", "--no-tags", "--no-write-fetch-head", clone_url, sha],
                        mirror, FETCH_TIMEOUT_S, check=False)
            if done.returncode != 0:
                raise FetchFailed(f"git fetch of {sha} from {clone_url} failed: {_short(done.stderr)}")
        for path in paths:
            if not _PATH.fullmatch(path) or ".." in path.split("/"):
                continue
            size = _git(["cat-file", "-s", f"{sha}:{path}"], mirror, READ_TIMEOUT_S, check=False)
            if size.returncode != 0:
                continue
            if int(size.stdout.strip() or 0) > MAX_PIPELINE_BYTES:
                raise PipelineFileMissing(f"{path} in {sha} is over {MAX_PIPELINE_BYTES} bytes")
            text = _git(["cat-file", "blob", f"{sha}:{path}"], mirror, READ_TIMEOUT_S).stdout
            meta = _git(["show", "-s", "--format=%an <%ae>%x00%aI%x00%B", sha], mirror, READ_TIMEOUT_S).stdout
            author, _sep, rest = meta.partition("\x00")
            stamp, _sep, message = rest.partition("\x00")
            return PipelineFile(path, text, message.rstrip("\n"), author, stamp)
        raise PipelineFileMissing(f"commit {sha} has none of {', '.join(paths)}")
    finally:
        os.close(lock_fd)


def _git(
    args: list[str], mirror: Path | None, timeout: float, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent", "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false", "GIT_LFS_SKIP_SMUDGE": "1", "GIT_PROTOCOL_FROM_USER": "0", "LC_ALL": "C",
    }
    prefix = ["git", *_HARDENING] + (["--git-dir", str(mirror)] if mirror is not None else [])
    try:
        done = subprocess.run([*prefix, *args], env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, errors="replace")
    except subprocess.TimeoutExpired:
        raise FetchFailed(f"git {args[0]} took longer than {timeout:.0f}s") from None
    if check and done.returncode != 0:
        raise FetchFailed(f"git {args[0]} failed: {_short(done.stderr)}")
    return done


def _short(text: str) -> str:
    return " ".join(text.split())[:300] or "(no message)"
