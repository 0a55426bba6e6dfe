"""A commit materialised as a work tree: its files, a shallow ``.git``, its submodules (adapter).

:func:`checkout_commit` makes, in a new directory, what a CI job expects in its workspace
(GitLab's ``GIT_STRATEGY: fetch``/``clone``): the commit's files and a ``.git`` holding
``depth`` commits of its history (``GIT_DEPTH``; 0: all the mirror has), ``HEAD`` detached at
the commit, ``origin`` set to the clone URL without its credentials; with
``GIT_SUBMODULE_STRATEGY`` ``normal``/``recursive``, its submodules too, each at the commit the
tree records, laid out as ``git submodule update --init`` lays them out (the files at the
submodule's path, a ``.git`` file there naming ``.git/modules/<name>``, the parent's config
recording the submodule), so ``git status`` and ``git submodule status`` are clean in the job.

The commit is fetched into the repository's mirror only when the mirror lacks it or that much
history (:func:`pipelines.forges.mirror.ensure_commit`, the one fetch path: hardened, capped, one
at a time per mirror); a warm mirror costs four git processes, two at a time (see
:mod:`pipelines.forges.worktree`). A submodule is fetched the same way, into *its* repository's
mirror, from that registration's clone URL, after :mod:`pipelines.forges.submodules` has judged
its URL and path.

Why git writes the files, and not sandpit's own extractor over ``git archive``: the job gets a
real repository (``git describe``, ``git diff $CI_COMMIT_BEFORE_SHA``, setuptools-scm need
``.git`` and an index that matches the files), and ``git archive`` would apply the tree's own
``export-ignore``/``export-subst`` attributes, so the files would not be the commit's. git's
checkout never writes through a symlink it created (its leading-path check), and it runs with
the mirror's hardening: no hooks, no system or global configuration and so no filter or LFS
driver. The tree's symlinks are job data: they are created as links and never followed here, and
the job's copy of the tree (:mod:`worker.sandbox.seed`) never follows them either. A submodule's
path is checked against the tree (no symlink, no ``..``) *and* opened on disk with no symlink
followed before git writes there.

The sizes and file counts of the tree and of every submodule's tree are added up and checked
(``git ls-tree -l``) before their files are written, the work goes into a temporary sibling
renamed into place at the end, and a failure removes the temporary.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipelines.forges.mirror import (
    READ_TIMEOUT_S,
    MirrorError,
    check_sha,
    ensure_commit,
    mirror_path,
    run_git,
)
from pipelines.forges.strategy import SubmoduleOptions
from pipelines.forges.submodules import (
    MAX_NESTING,
    MAX_SUBMODULES,
    Declared,
    Registered,
    Submodule,
    SubmoduleRefused,
    parse_gitmodules,
    plan_submodules,
    public_url,
)
from pipelines.forges.worktree import History, Tree, git_config, materialise, read_tree_and_history, write_gitfile

MAX_TREE_BYTES = 4 * 1024**3
MAX_TREE_FILES = 200_000


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
    submodules: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SubmoduleRequest:
    """What a job asks of submodules, and where they may come from: ``registered`` finds the
    repository of a canonical clone URL; ``own_repo`` is set for an untrusted run (its only
    repository)."""

    options: SubmoduleOptions
    registered: Callable[[str], Registered | None]
    own_repo: str | None = None


@dataclass
class _Budget:
    max_files: int
    max_bytes: int
    files: int = 0
    size: int = 0
    submodules: int = 0

    def take(self, tree: Tree, what: str) -> None:
        self.files += tree.files
        self.size += tree.size
        if self.files > self.max_files or self.size > self.max_bytes:
            raise CheckoutRefused(f"{what} brings the tree to {self.files} files and {self.size} bytes; the caps are "
                                  f"{self.max_files} files and {self.max_bytes} bytes")


def checkout_commit(mirrors: Path, repo_id: str, clone_url: str, sha: str, depth: int, dest: Path, *,
                    submodules: SubmoduleRequest | None = None, max_bytes: int = MAX_TREE_BYTES,
                    max_files: int = MAX_TREE_FILES) -> Checkout:
    """Materialise ``sha`` of repository ``repo_id`` (mirror under ``mirrors``, fetched from
    ``clone_url`` if it lacks the commit) at ``dest``, which must not exist yet (see the module
    docstring). A ``dest`` made meanwhile by someone else is kept and the work thrown away."""
    check_sha(sha)
    budget = _Budget(max_files, max_bytes)
    mirror, tree, history = _commit(mirrors, repo_id, clone_url, sha, depth)
    budget.take(tree, f"commit {sha[:12]}")
    request = submodules if submodules is not None and submodules.options.wanted else None
    planned = _plan(mirror, sha, tree, clone_url, request, 1) if request is not None else []
    temporary = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.mkdir(temporary, 0o700)
    try:
        done: list[str] = []
        materialise(mirror, sha, history, temporary, temporary / ".git",
                    git_config(public_url(clone_url), "", tuple((sub.name, sub.url) for sub in planned)))
        for sub in planned:
            assert request is not None
            _check_out_submodule(mirrors, sub, temporary, temporary / ".git" / "modules" / sub.name, request,
                                 budget, 1, "", done)
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
    return Checkout(dest, entries, budget.files, budget.size, tuple(done))


def _commit(mirrors: Path, repo_id: str, clone_url: str, sha: str, depth: int) -> tuple[Path, Tree, History]:
    """The mirror, tree and history of ``sha``, fetched first when the mirror lacks them."""
    mirror = mirror_path(mirrors, repo_id)
    found = read_tree_and_history(mirror, sha, depth)
    if found is None:
        ensure_commit(mirrors, repo_id, clone_url, sha, depth)
        found = read_tree_and_history(mirror, sha, depth)
        if found is None:
            raise CheckoutRefused(f"commit {sha[:12]} or {depth} commits of its history are not in the mirror after "
                                  "fetching it")
    return mirror, found[0], found[1]


def _plan(mirror: Path, sha: str, tree: Tree, url: str, request: SubmoduleRequest, level: int) -> list[Submodule]:
    """The submodules of one tree to check out (judged before anything of it is written)."""
    if ".gitmodules" not in tree.entries and not tree.gitlinks():
        return []
    options = request.options
    return plan_submodules(_gitmodules(mirror, sha, tree), tree.gitlinks(), tree.modes(), url,
                           depth=options.depth, recommend_shallow=options.recommend_shallow,
                           force_https=options.force_https,
                           selects=options.selects if level == 1 else (lambda _path: True),
                           registered=request.registered, own_repo=request.own_repo)


def _gitmodules(mirror: Path, sha: str, tree: Tree) -> dict[str, Declared]:
    entry = tree.entries.get(".gitmodules")
    if entry is None:
        return {}
    if entry.mode not in ("100644", "100755"):
        raise SubmoduleRefused(".gitmodules is not a regular file in the tree (a symlink?): it is not read")
    # read as data: no includes (a blob has no place to include from, and none is wanted)
    done = run_git(["config", "-z", "--no-includes", "--blob", f"{sha}:.gitmodules", "--list"], mirror,
                   READ_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise SubmoduleRefused(f".gitmodules of commit {sha[:12]} cannot be read as git config: "
                               f"{' '.join(done.stderr.split())[:200]}")
    return parse_gitmodules(done.stdout)


def _check_out_submodule(mirrors: Path, sub: Submodule, parent_tree: Path, git_dir: Path, request: SubmoduleRequest,
                         budget: _Budget, level: int, prefix: str, done: list[str]) -> None:
    shown = prefix + sub.path
    budget.submodules += 1
    if budget.submodules > MAX_SUBMODULES:
        raise SubmoduleRefused(f"submodule {shown}: more than {MAX_SUBMODULES} submodules")
    try:
        mirror, tree, history = _commit(mirrors, sub.source.repo_id, sub.source.clone_url, sub.sha, sub.depth)
    except MirrorError as exc:
        raise MirrorError(f"submodule {shown} ({sub.url}) at {sub.sha[:12]}: {exc}") from exc
    budget.take(tree, f"submodule {shown}")
    work_tree = _directory_beneath(parent_tree, sub.path, shown)
    nested: list[Submodule] = []
    if request.options.strategy == "recursive":
        nested = _plan(mirror, sub.sha, tree, sub.url, request, level + 1)
        if nested and level >= MAX_NESTING:
            raise SubmoduleRefused(f"submodule {shown}: submodules nested deeper than {MAX_NESTING} levels")
    git_dir.mkdir(parents=True, mode=0o755)
    materialise(mirror, sub.sha, history, work_tree, git_dir,
                git_config(sub.url, os.path.relpath(work_tree, git_dir), tuple((n.name, n.url) for n in nested)))
    write_gitfile(work_tree, git_dir)
    done.append(shown)
    for inner in nested:
        _check_out_submodule(mirrors, inner, work_tree, git_dir / "modules" / inner.name, request, budget, level + 1,
                             shown + "/", done)


def _directory_beneath(top: Path, path: str, shown: str) -> Path:
    """``top/path``, made sure on disk to be a directory reached through directories only (no
    symlink followed on the way, the last one made if git left none); the path was checked
    against the tree already, this holds it against what is on disk."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        parts = path.split("/")
        for at, part in enumerate(parts):
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if at != len(parts) - 1:
                    raise SubmoduleRefused(f"submodule {shown}: {'/'.join(parts[:at + 1])} is missing") from None
                os.mkdir(part, 0o755, dir_fd=fd)
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                raise SubmoduleRefused(f"submodule {shown}: {'/'.join(parts[:at + 1])} is not a directory on disk")
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = child
        if os.listdir(fd):
            raise SubmoduleRefused(f"submodule {shown}: its directory is not empty")
    finally:
        os.close(fd)
    return top / path


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
