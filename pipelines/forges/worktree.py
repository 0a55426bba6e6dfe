"""One repository's commit written out as a work tree and its git dir, from a mirror (adapter).

What ``git init`` + ``git fetch file://<mirror>`` + ``git checkout`` would make, made with
fewer processes (measured: the fetch alone spawned four — fetch, upload-pack, pack-objects,
index-pack — and took ≈ 40 ms for a small repository on a loaded 2-core host):

1. ``git ls-tree -r -t -l`` (the tree's entries, modes and sizes: the caps and the submodules
   are judged on it before a byte is written) and ``git rev-list --objects --parents
   --max-count=<depth>`` (the history the job's ``.git`` holds, and every object it needs) run
   side by side; a mirror lacking either (commit or history) says so and the caller fetches.
2. ``git pack-objects`` writes exactly those objects as one pack (and its index) into the new
   ``.git``, while ``git read-tree -u --reset`` writes the files and the index from the mirror:
   git's own checkout code (it never writes through a symlink it created, applies no filter or
   LFS driver: none is configured), so the files are the commit's, attributes and all.
3. ``HEAD`` (detached at the commit), ``shallow`` (the commits whose parents it lacks) and
   ``config`` are written here: a process less each.

The git dir is complete (``git fsck`` finds nothing missing), and its ``.git`` has two pack
files instead of a loose object per file, so each job's copy of the tree is cheaper too.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipelines.forges.mirror import FETCH_TIMEOUT_S, READ_TIMEOUT_S, FetchFailed, git_env, git_prefix, short


@dataclass(frozen=True, slots=True)
class TreeEntry:
    mode: str
    sha: str
    size: int


@dataclass(frozen=True, slots=True)
class Tree:
    """A commit's tree, every entry by path (directories too)."""

    entries: dict[str, TreeEntry]

    @property
    def files(self) -> int:
        return sum(1 for e in self.entries.values() if e.mode != "040000")

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries.values())

    def modes(self) -> dict[str, str]:
        return {path: entry.mode for path, entry in self.entries.items()}

    def gitlinks(self) -> dict[str, str]:
        return {path: entry.sha for path, entry in self.entries.items() if entry.mode == "160000"}


@dataclass(frozen=True, slots=True)
class History:
    """The commits ``.git`` holds (each with its parents) and every object they need."""

    parents: dict[str, tuple[str, ...]]
    objects: bytes


class _Git:
    """A git process started now and read later, so two can run side by side (each blocks only
    on its own pipe: reading one after the other cannot deadlock)."""

    def __init__(self, args: list[str], mirror: Path | None, stdin: bytes | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = args[0]
        self.stdin = stdin
        self.proc = subprocess.Popen([*git_prefix(mirror), *args], env=env or git_env(),
                                     stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def output(self, timeout: float, *, check: bool = True) -> bytes | None:
        """Its standard output; None when it failed and ``check`` is off."""
        try:
            out, err = self.proc.communicate(self.stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise FetchFailed(f"git {self.name} took longer than {timeout:.0f}s") from None
        if self.proc.returncode != 0:
            if not check:
                return None
            raise FetchFailed(f"git {self.name} failed: {short(err.decode('utf-8', 'replace'))}")
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


def read_tree_and_history(mirror: Path, sha: str, depth: int) -> tuple[Tree, History] | None:
    """The commit's tree and ``depth`` commits of its history (0: all the mirror has); None when
    the mirror lacks the commit or that much history (the caller fetches, then asks again)."""
    if not (mirror / "HEAD").exists():
        return None
    listing = _Git(["ls-tree", "-r", "-t", "-l", "-z", "--full-tree", sha], mirror)
    walk = _Git(["rev-list", "--objects", "--parents", *([f"--max-count={depth}"] if depth > 0 else []), sha, "--"],
                mirror)
    try:
        tree_out = listing.output(READ_TIMEOUT_S, check=False)
        walk_out = walk.output(FETCH_TIMEOUT_S, check=False)
    finally:
        listing.kill()
        walk.kill()
    if tree_out is None or walk_out is None:
        return None
    history = _history(walk_out)
    if not _complete(mirror, history, depth):
        return None
    return _tree(tree_out), history


def _tree(out: bytes) -> Tree:
    entries: dict[str, TreeEntry] = {}
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, _tab, path = record.partition(b"\t")
        fields = meta.split()
        if len(fields) == 4:
            size = int(fields[3]) if fields[3].isdigit() else 0
            entries[path.decode("utf-8", "surrogateescape")] = TreeEntry(fields[0].decode(), fields[2].decode(), size)
    return Tree(entries)


def _history(out: bytes) -> History:
    """``rev-list --objects --parents`` prints every commit (``<sha> <parent>…``) before any tree
    or blob (``<sha> <path>``); the first tree, the root, has an empty path: ``<sha> ``."""
    parents: dict[str, tuple[str, ...]] = {}
    lines = out.split(b"\n")
    at = 0
    for at, line in enumerate(lines):  # noqa: B007 - where the commits end is used below
        if not line or line.endswith(b" "):
            break
        words = line.decode().split()
        parents[words[0]] = tuple(words[1:])
    objects = b"\n".join([*(c.encode() for c in parents), *lines[at:]])
    return History(parents, objects)


def _boundary(mirror: Path) -> set[str]:
    shallow = mirror / "shallow"
    return set(shallow.read_text().split()) if shallow.exists() else set()


def _complete(mirror: Path, history: History, depth: int) -> bool:
    """Whether the walk holds ``depth`` commits (0: all), not cut short by the mirror's own
    shallow boundary."""
    if depth > 0 and len(history.parents) >= depth:
        return True
    return not _boundary(mirror).intersection(history.parents)


def materialise(mirror: Path, sha: str, history: History, work_tree: Path, git_dir: Path, config: str) -> None:
    """Write ``sha``'s files into ``work_tree`` (an empty directory) and its ``.git`` into
    ``git_dir`` (``history``'s objects as one pack, the index, ``HEAD``, ``shallow``,
    ``config``). Both are sandpit's own, private, directories: no job has seen them."""
    pack_dir = git_dir / "objects" / "pack"
    for folder in (pack_dir, git_dir / "objects" / "info", git_dir / "refs" / "heads", git_dir / "refs" / "tags",
                   git_dir / "info"):
        folder.mkdir(parents=True, mode=0o755, exist_ok=True)
    env = {**git_env(), "GIT_INDEX_FILE": str(git_dir / "index")}
    pack = _Git(["pack-objects", "-q", str(pack_dir / "pack")], mirror, stdin=history.objects)
    files = _Git(["--work-tree", str(work_tree), "read-tree", "-u", "--reset", sha], mirror, env=env)
    try:
        pack.output(FETCH_TIMEOUT_S)
        files.output(FETCH_TIMEOUT_S)
    finally:
        pack.kill()
        files.kill()
    (git_dir / "HEAD").write_text(f"{sha}\n")
    listed = set(history.parents)
    cut = {c for c, ps in history.parents.items() if any(p not in listed for p in ps)}
    cut |= _boundary(mirror) & listed
    if cut:
        (git_dir / "shallow").write_text("".join(f"{c}\n" for c in sorted(cut)))
    (git_dir / "config").write_text(config)


def git_config(origin: str, worktree: str = "", submodules: tuple[tuple[str, str], ...] = ()) -> str:
    """A work tree's ``.git/config``: ``origin`` (a clone URL without credentials, checked: no
    whitespace or control character; "" for none), ``core.worktree`` for a submodule's git dir,
    and the ``[submodule]`` sections (name, URL) git records for initialised submodules. Values
    are quoted as git's config syntax quotes them; names are checked paths (no quote).

    >>> git_config("git://h/a.git", submodules=(("lib", "git://h/lib.git"),)).splitlines()[-3:]
    ['[submodule "lib"]', '\\turl = "git://h/lib.git"', '\\tactive = true']
    """
    text = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n"
    if worktree:
        text += f"\tworktree = {_quote(worktree)}\n"
    if origin:
        text += f'[remote "origin"]\n\turl = {_quote(origin)}\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n'
    for name, url in submodules:
        text += f'[submodule "{name}"]\n\turl = {_quote(url)}\n\tactive = true\n'
    return text


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_gitfile(work_tree: Path, git_dir: Path) -> None:
    """``<work tree>/.git``: a file naming the submodule's git dir relative to the work tree (the
    tree is renamed into place and copied into each job's workspace, so no absolute path)."""
    fd = os.open(work_tree / ".git", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as out:
        out.write(f"gitdir: {os.path.relpath(git_dir, work_tree)}\n")
