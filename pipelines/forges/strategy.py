"""What a job's ``GIT_*`` variables ask of its checkout (pure), as GitLab's runner reads them.

- ``GIT_STRATEGY``: ``fetch`` (default) or ``clone``: the commit's files and a ``.git`` in
  ``/workspace``; ``none``: an empty workspace (artifacts and caches are still put there).
  sandpit makes every run's tree afresh from its mirror, so ``fetch`` and ``clone`` give the
  same result; ``empty`` (GitLab 17's spelling of an empty workspace) is ``none``.
- ``GIT_DEPTH``: how many commits of history ``.git`` holds (default 20, GitLab's default for
  new projects; ``0``: all of it).
- ``GIT_SUBMODULE_STRATEGY``: ``none`` (default), ``normal`` (the parent's submodules) or
  ``recursive`` (theirs too), checked out at the commit the parent's tree records, from
  repositories registered with sandpit only (:mod:`pipelines.forges.submodules` says which).
  ``GIT_SUBMODULE_PATHS`` (space-separated paths, ``:(exclude)path``), ``GIT_SUBMODULE_DEPTH``
  (default ``GIT_DEPTH``) and ``GIT_SUBMODULE_FORCE_HTTPS`` as GitLab defines them;
  ``GIT_SUBMODULE_UPDATE_FLAGS``: the flags of ``git submodule update`` that mean something for
  a fresh tree made from the recorded commits (``--recommend-shallow``, ``--depth N``,
  ``--recursive``; ``--init``, ``--checkout``, ``--force``, ``--jobs N``, … change nothing),
  the others refused by name with the reason.
- ``GIT_LFS_SKIP_SMUDGE``: LFS files are always checked out as their pointers; ``0`` (GitLab's
  way to ask for the objects) is refused with the reason (see docs/forges.md).

>>> git_options({"GIT_DEPTH": "3"}).depth
3
>>> git_options({"GIT_STRATEGY": "pull"})
"GIT_STRATEGY is 'pull'; use fetch, clone or none"
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pipelines.forges.mirror import DEFAULT_DEPTH

MAX_DEPTH = 100_000
SubmoduleStrategy = Literal["none", "normal", "recursive"]
_PATHSPEC = re.compile(r"[A-Za-z0-9._/ +@*?\[\]-]{1,255}")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
# flags of `git submodule update` that change nothing for a tree made afresh from the recorded
# commits, one fetch at a time per mirror: accepted, so a pipeline written for GitLab runs as is
_NO_OP_FLAGS = {
    "--init": "", "--checkout": "", "--force": "", "-f": "", "--quiet": "", "-q": "", "--progress": "",
    "--no-recommend-shallow": "", "--single-branch": "", "--no-single-branch": "", "--rebase": "", "--merge": "",
}
_NO_OP_WITH_VALUE = ("--jobs", "-j")
_REFUSED_FLAGS = {
    "--remote": "checks out the tip of the submodule's branch instead of the commit the parent records; sandpit "
                "checks out the recorded commit (update the submodule in the parent and push)",
    "--no-fetch": "would check out commits without fetching them into the fresh tree",
    "-N": "would check out commits without fetching them into the fresh tree",
    "--reference": "names a repository on the host",
    "--dissociate": "goes with --reference, which names a repository on the host",
    "--filter": "a partial clone would fetch missing objects from inside the job",
}


@dataclass(frozen=True, slots=True)
class SubmoduleOptions:
    """What a job asks of its submodules (``strategy`` ``none``: nothing)."""

    strategy: SubmoduleStrategy = "none"
    depth: int = DEFAULT_DEPTH
    paths: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    recommend_shallow: bool = False
    force_https: bool = False

    @property
    def wanted(self) -> bool:
        return self.strategy != "none"

    def selects(self, path: str) -> bool:
        """Whether a top-level submodule at ``path`` is checked out (git's pathspec rules: a
        path matches a spec equal to it, a leading directory of it, or a glob over it).

        >>> SubmoduleOptions("normal", paths=("libs",), excluded=("libs/old",)).selects("libs/new")
        True
        >>> SubmoduleOptions("normal", paths=("libs",), excluded=("libs/old",)).selects("libs/old")
        False
        """
        if self.paths and not any(_matches(path, spec) for spec in self.paths):
            return False
        return not any(_matches(path, spec) for spec in self.excluded)

    def key(self) -> str:
        """What sets this tree apart from another of the same commit and depth (it names a
        directory: only letters, digits and dashes)."""
        if not self.wanted:
            return ""
        spec = "\0".join((*self.paths, "!", *self.excluded, str(self.recommend_shallow), str(self.force_https)))
        return f"-sub-{self.strategy}-{self.depth}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"


@dataclass(frozen=True, slots=True)
class GitOptions:
    strategy: Literal["none", "fetch", "clone"] = "fetch"
    depth: int = DEFAULT_DEPTH
    submodules: SubmoduleOptions = SubmoduleOptions()

    @property
    def checkout(self) -> bool:
        return self.strategy != "none"

    @property
    def variant(self) -> str:
        """The name of this checkout among a run's trees: ``depth-20``, ``depth-1-sub-normal-1-…``."""
        return f"depth-{self.depth}{self.submodules.key()}"


def git_options(env: Mapping[str, str]) -> GitOptions | str:
    """The job's checkout options, or a sentence saying which variable is wrong and how.

    >>> git_options({"GIT_STRATEGY": "none"}).checkout
    False
    >>> git_options({"GIT_SUBMODULE_STRATEGY": "recursive", "GIT_DEPTH": "5"}).submodules.depth
    5
    >>> flags = {"GIT_SUBMODULE_STRATEGY": "normal", "GIT_SUBMODULE_UPDATE_FLAGS": "--remote"}
    >>> git_options(flags)  # doctest: +ELLIPSIS
    "GIT_SUBMODULE_UPDATE_FLAGS --remote is not supported: checks out the tip..."
    """
    strategy = (env.get("GIT_STRATEGY") or "fetch").strip().lower()
    if strategy == "empty":
        strategy = "none"
    if strategy not in ("none", "fetch", "clone"):
        return f"GIT_STRATEGY is {strategy[:40]!r}; use fetch, clone or none"
    depth = _depth(env, "GIT_DEPTH", DEFAULT_DEPTH)
    if isinstance(depth, str):
        return depth
    lfs = (env.get("GIT_LFS_SKIP_SMUDGE") or "1").strip().lower()
    if lfs in _FALSE:
        return (f"GIT_LFS_SKIP_SMUDGE {lfs} asks for Git LFS objects, which sandpit does not fetch: LFS files are "
                "checked out as their pointers; run `git lfs pull` in the job's script where its network allows, "
                "or leave GIT_LFS_SKIP_SMUDGE unset")
    if lfs not in _TRUE:
        return f"GIT_LFS_SKIP_SMUDGE is {lfs[:40]!r}; use 1 (LFS files stay pointers, the only choice)"
    if strategy == "none":  # as GitLab's runner: no checkout, no submodules
        return GitOptions("none", depth)
    submodules = _submodule_options(env, depth)
    if isinstance(submodules, str):
        return submodules
    return GitOptions(strategy, depth, submodules)  # type: ignore[arg-type]  # checked above


def _depth(env: Mapping[str, str], name: str, default: int) -> int | str:
    text = (env.get(name) or "").strip()
    if not text:
        return default
    if text.isdigit() and int(text) <= MAX_DEPTH:
        return int(text)
    return f"{name} is {text[:40]!r}; use a number of commits (0: the whole history)"


def _submodule_options(env: Mapping[str, str], depth: int) -> SubmoduleOptions | str:
    strategy = (env.get("GIT_SUBMODULE_STRATEGY") or "none").strip().lower()
    if strategy not in ("none", "normal", "recursive"):
        return f"GIT_SUBMODULE_STRATEGY is {strategy[:40]!r}; use none, normal or recursive"
    if strategy == "none":
        return SubmoduleOptions()
    sub_depth = _depth(env, "GIT_SUBMODULE_DEPTH", depth)
    if isinstance(sub_depth, str):
        return sub_depth
    paths: list[str] = []
    excluded: list[str] = []
    for spec in (env.get("GIT_SUBMODULE_PATHS") or "").split():
        problem = _pathspec(spec, paths, excluded)
        if problem:
            return problem
    force = (env.get("GIT_SUBMODULE_FORCE_HTTPS") or "false").strip().lower()
    if force not in _TRUE + _FALSE:
        return f"GIT_SUBMODULE_FORCE_HTTPS is {force[:40]!r}; use true or false"
    words = (env.get("GIT_SUBMODULE_UPDATE_FLAGS") or "").split()
    shallow, recursive = False, strategy == "recursive"
    at = 0
    while at < len(words):
        word, at = words[at], at + 1
        flag, _eq, value = word.partition("=")
        if word.startswith("-j") and len(word) > 2:  # -j8, as git's option parser takes it
            flag, value = "-j", word[2:]
        if flag in _NO_OP_FLAGS and not value:
            continue
        if flag in _NO_OP_WITH_VALUE or flag == "--depth":
            if not value and at < len(words):
                value, at = words[at], at + 1
            if not value.isdigit() or int(value) > MAX_DEPTH:
                return f"GIT_SUBMODULE_UPDATE_FLAGS {flag} wants a number, not {value[:40]!r}"
            if flag == "--depth":
                sub_depth = int(value)
        elif word == "--recommend-shallow":
            shallow = True
        elif word == "--recursive":
            recursive = True
        elif flag in _REFUSED_FLAGS:
            return f"GIT_SUBMODULE_UPDATE_FLAGS {flag} is not supported: {_REFUSED_FLAGS[flag]}"
        else:
            return (f"GIT_SUBMODULE_UPDATE_FLAGS {word[:40]} is not supported; sandpit takes --recommend-shallow, "
                    "--depth N, --recursive and flags that change nothing in a fresh tree (--init, --force, "
                    "--jobs N, ...)")
    return SubmoduleOptions("recursive" if recursive else "normal", sub_depth, tuple(paths), tuple(excluded),
                            shallow, force in _TRUE)


def _pathspec(spec: str, paths: list[str], excluded: list[str]) -> str:
    """Adds ``spec`` to ``paths`` or ``excluded``; a sentence when it is not one sandpit takes."""
    target = paths
    for prefix in (":(exclude)", ":!", ":^"):
        if spec.startswith(prefix):
            spec, target = spec[len(prefix):], excluded
            break
    if spec.startswith(":"):
        return (f"GIT_SUBMODULE_PATHS {spec[:60]!r}: only paths and :(exclude)path are supported (no other "
                "pathspec magic)")
    spec = spec.strip("/")
    if not _PATHSPEC.fullmatch(spec) or ".." in spec.split("/"):
        return f"GIT_SUBMODULE_PATHS {spec[:60]!r} is not a path inside the repository"
    target.append(spec)
    return ""


def _matches(path: str, spec: str) -> bool:
    if any(char in spec for char in "*?["):
        return fnmatch.fnmatchcase(path, spec)
    return path == spec or path.startswith(spec + "/")
