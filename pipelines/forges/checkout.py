"""A commit of a mirror materialised as a work tree: its files and a shallow ``.git`` (adapter).

:func:`checkout_commit` makes, in a new directory, what a CI job expects in its workspace
(GitLab's ``GIT_STRATEGY: fetch``/``clone``): the commit's files and a ``.git`` holding
``depth`` commits of its history (``GIT_DEPTH``; 0: all the mirror has), ``HEAD`` detached at
the commit, ``origin`` set to the clone URL when the URL carries no credentials.

Why ``git checkout`` writes the files, and not sandpit's own extractor over ``git archive``:
the job gets a real repository (``git describe``, ``git diff $CI_COMMIT_BEFORE_SHA``,
setuptools-scm all need ``.git`` and an index that matches the files), and ``git archive``
would apply the tree's own ``export-ignore``/``export-subst`` attributes, so the files would
not be the commit's. git's checkout never writes through a symlink it created (its
leading-path check), and it runs here with the mirror's hardening: no hooks (an empty
template, ``core.hooksPath=/dev/null``), no system or global configuration and so no filter
or LFS driver, no submodules (``GIT_SUBMODULE_STRATEGY`` other than ``none`` is refused by the
caller). The tree's symlinks are job data: they are created as links and never followed here,
and the job's copy of the tree (:mod:`worker.sandbox.seed`) never follows them either.

The tree's size and file count are checked (``git ls-tree -l``) before anything is written,
the work goes into a temporary sibling renamed into place at the end, and a failure removes
the temporary. The local fetch from the mirror is the one place ``file://`` is allowed, for a
URL sandpit builds from its own mirror's path, never from data.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pipelines.forges.mirror import FETCH_TIMEOUT_S, READ_TIMEOUT_S, MirrorError, check_sha, run_git

MAX_TREE_BYTES = 4 * 1024**3
MAX_TREE_FILES = 200_000
_LOCAL_FETCH = ("-c", "protocol.file.allow=always", "-c", "uploadpack.allowAnySHA1InWant=true")


class CheckoutRefused(MirrorError):
    """The commit's tree is over a cap, or cannot be written."""


@dataclass(frozen=True, slots=True)
class Checkout:
    """A materialised commit: ``root`` and every entry under it (files, links, directories;
    ``.git`` included), as relative paths, for the copy into each job's workspace."""

    root: Path
    entries: tuple[str, ...]
    files: int
    size: int


def checkout_commit(mirror: Path, sha: str, depth: int, dest: Path, clone_url: str = "", *,
                    max_bytes: int = MAX_TREE_BYTES, max_files: int = MAX_TREE_FILES) -> Checkout:
    """Materialise ``sha`` of ``mirror`` at ``dest`` (which must not exist yet; see the module
    docstring). A ``dest`` made meanwhile by someone else is kept and the work thrown away."""
    check_sha(sha)
    files, size = _tree_size(mirror, sha, max_files)
    if files > max_files or size > max_bytes:
        raise CheckoutRefused(f"commit {sha[:12]} has {files} files and {size} bytes; the caps are "
                              f"{max_files} files and {max_bytes} bytes")
    temporary = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.mkdir(temporary, 0o700)
    try:
        _init_repository(temporary, clone_url if clone_url and "@" not in urlsplit(clone_url).netloc else "")
        work = ["-C", str(temporary)]
        deepen = [f"--depth={depth}"] if depth > 0 else []
        run_git([*_LOCAL_FETCH, *work, "fetch", "--quiet", *deepen, "--no-tags", "--no-write-fetch-head",
                 "--no-recurse-submodules", f"file://{mirror.resolve()}", sha], None, FETCH_TIMEOUT_S)
        run_git([*work, "checkout", "--quiet", "--detach", sha], None, FETCH_TIMEOUT_S)
        entries = tuple(list_entries(temporary))
        try:
            os.rename(temporary, dest)
        except OSError:
            if not dest.is_dir():
                raise
            shutil.rmtree(temporary, ignore_errors=True)  # another process made it first: theirs is the same
            entries = tuple(list_entries(dest))
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return Checkout(dest, entries, files, size)


_CONFIG = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n"


def _init_repository(top: Path, origin: str) -> None:
    """What ``git init --template=`` writes (HEAD, config, objects/, refs/), written here: a
    process less on every run's first job. ``origin`` (a checked clone URL without credentials:
    no whitespace or control character) is quoted as git's config syntax quotes a value."""
    git_dir = top / ".git"
    for folder in ("objects/info", "objects/pack", "refs/heads", "refs/tags", "info"):
        (git_dir / folder).mkdir(parents=True, mode=0o755)
    (git_dir / "HEAD").write_text("ref: refs/heads/main\n")
    config = _CONFIG
    if origin:
        quoted = origin.replace("\\", "\\\\").replace('"', '\\"')
        config += f'[remote "origin"]\n\turl = "{quoted}"\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n'
    (git_dir / "config").write_text(config)


def _tree_size(mirror: Path, sha: str, max_files: int) -> tuple[int, int]:
    """Files and bytes of the commit's tree (stops counting past ``max_files``)."""
    done = run_git(["ls-tree", "-r", "-l", "-z", "--full-tree", sha], mirror, READ_TIMEOUT_S)
    files = size = 0
    for entry in done.stdout.split("\0"):
        if not entry:
            continue
        meta = entry.split("\t", 1)[0].split()
        files += 1
        if len(meta) == 4 and meta[3].isdigit():
            size += int(meta[3])
        if files > max_files:
            break
    return files, size


def list_entries(root: Path) -> list[str]:
    """Every file, symlink and directory under ``root`` as a relative path, directories before
    what they hold; symlinks are listed, never followed (``os.walk`` does not follow them).

    >>> import tempfile
    >>> top = Path(tempfile.mkdtemp())
    >>> (top / "d").mkdir(); (top / "d" / "f").write_text("x"); (top / "l").symlink_to("/etc")
    1
    >>> list_entries(top)
    ['d', 'l', 'd/f']
    """
    found: list[str] = []
    for folder, dirs, names in os.walk(root):
        base = os.path.relpath(folder, root)
        prefix = "" if base == "." else base + "/"
        dirs.sort()
        found.extend(prefix + name for name in dirs)
        found.extend(prefix + name for name in sorted(names))
    return found
