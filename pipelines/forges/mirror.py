"""A repository's commits fetched into a per-repository bare mirror, and files read from them (adapter).

Both sides of a forge run go through here: the API reads the pipeline file (and what it
includes) from the pushed commit, the worker checks the commit out for its jobs
(:mod:`pipelines.forges.checkout`). :func:`ensure_commit` fetches one commit with
``--depth=<depth>`` (no tags, no submodules) into ``<root>/<repo id>.git`` unless the mirror has
it with that much history already; :func:`read_blobs` reads files of a commit with one ``git
cat-file --batch``; :func:`read_pipeline_file` is the two together for the first pipeline path
a commit has.

``git`` is hardened against the repository and its URL: only the ``git://``, ``http://`` and
``https://`` transports (``protocol.allow=never`` plus those three: no ``file://``, no ``ext::``
command transport, no ``ssh`` that would read the host's keys), no hooks
(``core.hooksPath=/dev/null``), no system or global configuration, no credential prompt or
helper (``GIT_TERMINAL_PROMPT=0``), no LFS smudge, ``transfer.fsckObjects``, no automatic gc (a
commit fetched by id has no ref: a gc would drop it), a timeout on every call, a cap on the bytes
a fetch may write (:data:`MAX_FETCH_BYTES`, watched while it runs) and on every file read. One
fetch at a time per mirror (an ``flock`` on the mirror's lock file); a commit already in the
mirror with enough history is not fetched again (a warm mirror costs one ``git cat-file
--batch`` process for the commit and the files).

::

    MirrorError                 the commit or its files could not be read
    ├── UnsupportedUrl          a clone URL whose transport is not allowed
    ├── FetchFailed             git could not fetch the commit (its stderr, shortened), or a cap
    └── PipelineFileMissing     none of the pipeline paths exists in the commit (or one is too big)
"""

from __future__ import annotations

import datetime as dt
import os
import re
import select
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.files.locks import hold

ALLOWED_SCHEMES = ("git://", "http://", "https://")
FETCH_TIMEOUT_S = 120.0
READ_TIMEOUT_S = 15.0
MAX_PIPELINE_BYTES = 1024 * 1024
MAX_FETCH_BYTES = 2 * 1024**3
#: GitLab's default for new projects (its "Git shallow clone" setting): the history a job gets
#: when its GIT_DEPTH is not set, and what the API fetches, so the worker finds the mirror warm
DEFAULT_DEPTH = 20
SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_PATH = re.compile(r"[A-Za-z0-9._/ +@-]{1,255}")
_REPO_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")
HARDENING = (
    "-c", "protocol.allow=never", "-c", "protocol.git.allow=always", "-c", "protocol.http.allow=always",
    "-c", "protocol.https.allow=always", "-c", "core.hooksPath=/dev/null", "-c", "credential.helper=",
    "-c", "fetch.recurseSubmodules=false", "-c", "submodule.recurse=false", "-c", "core.fsmonitor=false",
    "-c", "transfer.fsckObjects=true", "-c", "gc.auto=0", "-c", "maintenance.auto=false",
    "-c", "core.symlinks=true", "-c", "core.protectNTFS=true", "-c", "advice.detachedHead=false",
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


def check_sha(sha: str) -> str:
    """``sha`` if it is a full lower-case commit id (never a ref name or an option), else FetchFailed.

    >>> check_sha("a" * 40) == "a" * 40
    True
    """
    if not SHA.fullmatch(sha):
        raise FetchFailed(f"{sha[:80]!r} is not a commit id")
    return sha


def check_ref(ref: str) -> str:
    """A branch or tag name that may be handed to ``git ls-remote`` (no option, no ``..``).

    >>> check_ref("release/1.2")
    'release/1.2'
    """
    if not _REF.fullmatch(ref) or ".." in ref or ref.endswith((".lock", "/", ".")) or "//" in ref:
        raise FetchFailed(f"{ref[:80]!r} is not a branch or tag name sandpit fetches")
    return ref


def mirror_path(root: Path, repo_id: str) -> Path:
    """``<root>/<repo id>.git`` (the id is checked: it names a directory)."""
    if not _REPO_ID.fullmatch(repo_id):
        raise ValueError(f"repository id {repo_id!r} cannot name a mirror")
    return root / f"{repo_id}.git"


def ensure_commit(root: Path, repo_id: str, clone_url: str, sha: str, depth: int = DEFAULT_DEPTH) -> Path:
    """The mirror of ``repo_id`` with commit ``sha`` and ``depth`` commits of its history (0: all
    of it), fetched from ``clone_url`` if it lacks them; the mirror's path."""
    check_clone_url(clone_url)
    check_sha(sha)
    mirror = mirror_path(root, repo_id)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    with hold(root / f"{repo_id}.lock"):
        _init(mirror)
        if not _has_history(mirror, sha, depth):
            _fetch(mirror, clone_url, sha, depth)
            if not _has_history(mirror, sha, 1):
                raise FetchFailed(f"git fetch from {clone_url} did not bring commit {sha}")
    return mirror


def resolve_ref(clone_url: str, ref: str) -> str:
    """The commit a branch or tag ``ref`` of ``clone_url`` points at (``git ls-remote``); a
    full commit id is returned as it is."""
    if SHA.fullmatch(ref):
        return ref
    check_clone_url(clone_url)
    check_ref(ref)
    done = run_git(["ls-remote", "--", clone_url, f"refs/heads/{ref}", f"refs/tags/{ref}", f"refs/tags/{ref}^{{}}"],
                   None, FETCH_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise FetchFailed(f"git ls-remote of {clone_url} failed: {short(done.stderr)}")
    found: dict[str, str] = {}
    for line in done.stdout.splitlines():
        sha, _tab, name = line.partition("\t")
        found[name] = sha
    for name in (f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}"):
        if SHA.fullmatch(found.get(name, "")):
            return found[name]
    raise FetchFailed(f"{clone_url} has no branch or tag {ref!r}")


def read_blobs(mirror: Path, sha: str, paths: Sequence[str], cap: int = MAX_PIPELINE_BYTES,
               ) -> tuple[bytes | None, dict[str, bytes]]:
    """The commit object (None when the mirror lacks it) and the files of ``paths`` it holds (a
    path that is missing, a directory or a link is left out), read by one ``git cat-file
    --batch`` (a warm mirror costs one process, not one per object)."""
    wanted = [path for path in paths if _PATH.fullmatch(path) and ".." not in path.split("/")]
    proc = subprocess.Popen([*git_prefix(mirror), "cat-file", "--batch"], env=git_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        # the requests are a few lines: they fit the pipe's buffer, so writing them never waits on git
        proc.stdin.write("".join(f"{request}\n" for request in (f"{sha}^{{commit}}", *(f"{sha}:{p}" for p in wanted)))
                         .encode())
        proc.stdin.close()
        stream = _DeadlineReader(proc.stdout.fileno(), time.monotonic() + READ_TIMEOUT_S)
        commit = _next_object(stream, b"commit", cap)
        if commit is None:
            return None, {}
        found = {}
        for path in wanted:
            blob = _next_object(stream, b"blob", cap, path)
            if blob is not None:
                found[path] = blob
        return commit, found
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


class _DeadlineReader:
    """Reads git's output with one deadline for all of it, on the calling thread (a timer thread
    to kill a stuck git cost ≈ 2 ms per read on a busy host: the start of a thread)."""

    def __init__(self, fd: int, deadline: float) -> None:
        self.fd, self.deadline, self.buffer, self.ended = fd, deadline, bytearray(), False

    def _fill(self) -> None:
        left = self.deadline - time.monotonic()
        ready = select.select([self.fd], [], [], max(0.0, left))[0] if left > 0 else []
        if not ready:
            raise FetchFailed(f"git cat-file took longer than {READ_TIMEOUT_S:.0f}s")
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            self.ended = True
        self.buffer += chunk

    def readline(self) -> bytes:
        while b"\n" not in self.buffer and not self.ended:
            self._fill()
        end = self.buffer.find(b"\n") + 1 or len(self.buffer)
        line = bytes(self.buffer[:end])
        del self.buffer[:end]
        return line

    def read(self, size: int) -> bytes:
        while len(self.buffer) < size and not self.ended:
            self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


def read_pipeline_file(root: Path, repo_id: str, clone_url: str, sha: str, paths: Sequence[str],
                       depth: int = DEFAULT_DEPTH) -> PipelineFile:
    """The first of ``paths`` in commit ``sha`` of ``clone_url`` (fetched into the mirror if needed),
    with the commit's message, author and time."""
    check_clone_url(clone_url)
    check_sha(sha)
    mirror = mirror_path(root, repo_id)
    commit, found = read_blobs(mirror, sha, paths) if (mirror / "HEAD").exists() else (None, {})
    if commit is None:
        ensure_commit(root, repo_id, clone_url, sha, depth)
        commit, found = read_blobs(mirror, sha, paths)
        if commit is None:
            raise FetchFailed(f"git fetch from {clone_url} did not bring commit {sha}")
    path = next((p for p in paths if p in found), None)
    if path is None:
        raise PipelineFileMissing(f"commit {sha} has none of {', '.join(paths)}")
    author, stamp, message = commit_fields(commit)
    return PipelineFile(path, found[path].decode("utf-8", "replace"), message, author, stamp)


def _init(mirror: Path) -> None:
    if not (mirror / "HEAD").exists():
        run_git(["init", "--quiet", "--bare", "--template=", str(mirror)], None, READ_TIMEOUT_S)


def _has_history(mirror: Path, sha: str, depth: int) -> bool:
    """Whether the mirror has ``sha`` and ``depth`` commits of history below it (0: all of it): a
    shallow mirror's boundary commits (its ``shallow`` file) must not cut the walk short."""
    args = ["rev-list", *([f"--max-count={depth}"] if depth > 0 else []), sha, "--"]
    done = run_git(args, mirror, READ_TIMEOUT_S, check=False)
    if done.returncode != 0:
        return False  # the commit (or an ancestor it needs) is not there
    listed = done.stdout.split()
    if depth > 0 and len(listed) >= depth:
        return True
    shallow_file = mirror / "shallow"
    boundary = set(shallow_file.read_text().split()) if shallow_file.exists() else set()
    return not boundary.intersection(listed)


def _fetch(mirror: Path, clone_url: str, sha: str, depth: int) -> None:
    """``git fetch`` of one commit, killed past :data:`FETCH_TIMEOUT_S` or when the packs it
    writes pass :data:`MAX_FETCH_BYTES` (git has no such cap of its own for a fetch)."""
    shallow = (mirror / "shallow").exists()
    deepen = [f"--depth={depth}"] if depth > 0 else (["--unshallow"] if shallow else [])
    args = [*git_prefix(mirror), "fetch", "--quiet", *deepen, "--no-tags", "--no-write-fetch-head",
            "--no-recurse-submodules", "--", clone_url, sha]
    proc = subprocess.Popen(args, env=git_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(proc.stderr.read(64 * 1024) if proc.stderr else b""),
                              daemon=True)
    reader.start()
    deadline = time.monotonic() + FETCH_TIMEOUT_S
    why = ""
    while proc.poll() is None:
        if time.monotonic() > deadline:
            why = f"git fetch took longer than {FETCH_TIMEOUT_S:.0f}s"
        elif _pack_bytes(mirror) > MAX_FETCH_BYTES:
            why = f"git fetch wrote more than {MAX_FETCH_BYTES} bytes (the mirror's cap)"
        if why:
            proc.kill()
            break
        time.sleep(0.02)
    proc.wait()
    reader.join(timeout=5)
    proc.stderr.close()
    if why:
        raise FetchFailed(f"fetch of {sha} from {clone_url} stopped: {why}")
    if proc.returncode != 0:
        text = b"".join(errors).decode("utf-8", "replace")
        raise FetchFailed(f"git fetch of {sha} from {clone_url} failed: {short(text)}")


def _pack_bytes(mirror: Path) -> int:
    """Bytes of the packs being written (``objects/pack/tmp_*``) and loose objects' count of a fetch."""
    total = 0
    try:
        with os.scandir(mirror / "objects" / "pack") as entries:
            for entry in entries:
                if entry.name.startswith("tmp_") and entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    except OSError:
        return 0
    return total


def _next_object(stream: _DeadlineReader, kind: bytes, cap: int, path: str | None = None) -> bytes | None:
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


def commit_fields(commit: bytes) -> tuple[str, str, str]:
    """``Name <email>``, ISO 8601 time and message of a raw commit object.

    >>> commit_fields(b"tree t\\nauthor Ada <a@b> 0 +0000\\n\\nfix\\n")
    ('Ada <a@b>', '1970-01-01T00:00:00+00:00', 'fix')
    """
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


def git_env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent", "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false", "GIT_LFS_SKIP_SMUDGE": "1", "GIT_PROTOCOL_FROM_USER": "0", "LC_ALL": "C",
    }


def git_prefix(mirror: Path | None) -> list[str]:
    return ["git", *HARDENING] + (["--git-dir", str(mirror)] if mirror is not None else [])


def run_git(
    args: list[str], mirror: Path | None, timeout: float, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run([*git_prefix(mirror), *args], env=git_env(), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, errors="replace")
    except subprocess.TimeoutExpired:
        raise FetchFailed(f"git {args[0]} took longer than {timeout:.0f}s") from None
    if check and done.returncode != 0:
        raise FetchFailed(f"git {args[0]} failed: {short(done.stderr)}")
    return done


def short(text: str) -> str:
    return " ".join(text.split())[:300] or "(no message)"
