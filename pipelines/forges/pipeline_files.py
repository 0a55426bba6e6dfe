"""A commit's pipeline file and everything it includes, read from the mirror (adapter).

What :func:`pipelines.language.loader.load_pipeline` is for a work tree on disk, this is for a
commit: the entry file (the first of the repository's pipeline paths the commit has), then,
transitively, every ``include: local`` file it names (globs matched against the commit's tree)
and every ``include: project`` file, fetched from the repository sandpit knows by that name
(:data:`ProjectResolver`: a registered repository, else nothing, and the planner reports the
include as not found with its place). A local include inside a project's file is that
project's file. The commit's tree is listed only when a glob or a ``rules: exists`` needs it
(one ``git ls-tree``), so a plain pipeline costs one ``git cat-file --batch`` per commit read.

>>> from pipelines.language.includes import project_key
>>> project_key("acme/ci", "v1", "a.yml")
'project:acme/ci@v1:a.yml'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.forges.mirror import (
    READ_TIMEOUT_S,
    MirrorError,
    PipelineFileMissing,
    commit_fields,
    ensure_commit,
    mirror_path,
    read_blobs,
    resolve_ref,
    run_git,
)
from pipelines.language.globs import compile_glob
from pipelines.language.includes import local_include_patterns, project_includes, project_key

MAX_FILES = 150
MAX_LISTED = 200_000


@dataclass(frozen=True, slots=True)
class KnownProject:
    """A repository an ``include: project`` may name: its mirror, where it is fetched from, and
    the branch an include without ``ref`` reads."""

    repo_id: str
    clone_url: str
    default_branch: str


ProjectResolver = Callable[[str], KnownProject | None]


@dataclass(frozen=True, slots=True)
class CommitPipeline:
    """What the planner needs from a commit: the files by path (entry first; other projects'
    under their project keys), the commit's tree when a rule needs it, and the commit's fields."""

    entry: str
    files: dict[str, str]
    existing: frozenset[str] | None
    commit_message: str
    commit_author: str
    commit_timestamp: str


@dataclass
class _Commit:
    mirror: Path
    sha: str
    listing: frozenset[str] | None = None

    def tree(self) -> frozenset[str]:
        if self.listing is None:
            done = run_git(["ls-tree", "-r", "-z", "--name-only", "--full-tree", self.sha], self.mirror,
                           READ_TIMEOUT_S)
            names = [n for n in done.stdout.split("\0") if n]
            self.listing = frozenset(names[:MAX_LISTED])
        return self.listing


@dataclass
class _Loader:
    root: Path
    resolve: ProjectResolver
    files: dict[str, str] = field(default_factory=dict)
    projects: dict[tuple[str, str], _Commit | None] = field(default_factory=dict)

    def add(self, commit: _Commit, prefix: str, names: Sequence[str]) -> list[str]:
        """Read ``names`` of ``commit`` into ``files`` (under ``prefix``); the keys added."""
        wanted = [n for n in names if prefix + n not in self.files]
        if not wanted or len(self.files) >= MAX_FILES:
            return []
        _commit, found = read_blobs(commit.mirror, commit.sha, wanted)
        added = []
        for name in wanted:
            if name in found:
                self.files[prefix + name] = found[name].decode("utf-8", "replace")
                added.append(prefix + name)
        return added

    def includes(self, key: str, commit: _Commit, prefix: str) -> list[tuple[str, _Commit, str]]:
        """The files ``key`` includes, read: (key, its commit, its prefix) of each new one."""
        text = self.files[key]
        found: list[tuple[str, _Commit, str]] = []
        local: list[str] = []
        for pattern in local_include_patterns(text, key):
            if any(char in pattern for char in "*?[{"):
                regex = compile_glob(pattern, include=True)
                local += sorted(name for name in commit.tree() if regex.match(name))
            else:
                local.append(pattern)
        found += [(k, commit, prefix) for k in self.add(commit, prefix, local)]
        for include in project_includes(text, key):
            other = self.project(include.project, include.ref)
            if other is not None and "$" not in include.ref:
                other_prefix = project_key(include.project, include.ref, "")
                found += [(k, other, other_prefix) for k in self.add(other, other_prefix, include.files)]
        return found

    def project(self, name: str, ref: str) -> _Commit | None:
        """The commit ``ref`` of project ``name`` in its mirror (fetched), None when sandpit does not
        know the project or cannot fetch it (the planner then says the include is not found)."""
        if (name, ref) not in self.projects:
            known = self.resolve(name) if "$" not in name else None
            commit = None
            if known is not None:
                try:
                    sha = resolve_ref(known.clone_url, ref or known.default_branch)
                    mirror = ensure_commit(self.root, known.repo_id, known.clone_url, sha, depth=1)
                    commit = _Commit(mirror, sha)
                except MirrorError:
                    commit = None
            self.projects[(name, ref)] = commit
        return self.projects[(name, ref)]


def load_commit_pipeline(
    root: Path, repo_id: str, clone_url: str, sha: str, paths: Sequence[str], resolve: ProjectResolver,
    depth: int,
) -> CommitPipeline:
    """The pipeline of commit ``sha`` (see the module docstring); :class:`PipelineFileMissing`
    when the commit has none of ``paths``, ``FetchFailed`` when it cannot be fetched."""
    mirror = mirror_path(root, repo_id)
    raw, found = read_blobs(mirror, sha, paths) if (mirror / "HEAD").exists() else (None, {})
    if raw is None:
        ensure_commit(root, repo_id, clone_url, sha, depth)
        raw, found = read_blobs(mirror, sha, paths)
        if raw is None:
            raise PipelineFileMissing(f"commit {sha} is not in the mirror after fetching it")
    entry = next((p for p in paths if p in found), None)
    if entry is None:
        raise PipelineFileMissing(f"commit {sha} has none of {', '.join(paths)}")
    commit = _Commit(mirror, sha)
    loader = _Loader(root, resolve, {entry: found[entry].decode("utf-8", "replace")})
    queue: list[tuple[str, _Commit, str]] = [(entry, commit, "")]
    while queue and len(loader.files) < MAX_FILES:
        key, at, prefix = queue.pop(0)
        queue += loader.includes(key, at, prefix)
    existing = commit.tree() if any("exists" in text for text in loader.files.values()) else commit.listing
    author, stamp, message = commit_fields(raw)
    return CommitPipeline(entry, loader.files, existing, message, author, stamp)
