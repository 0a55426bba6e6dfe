"""What a job's ``GIT_*`` variables ask of its checkout (pure), as GitLab's runner reads them.

- ``GIT_STRATEGY``: ``fetch`` (default) or ``clone``: the commit's files and a ``.git`` in
  ``/workspace``; ``none``: an empty workspace (artifacts and caches are still put there).
  sandpit makes every run's tree afresh from its mirror, so ``fetch`` and ``clone`` give the
  same result; ``empty`` (GitLab 17's spelling of an empty workspace) is ``none``.
- ``GIT_DEPTH``: how many commits of history ``.git`` holds (default 20, GitLab's default for
  new projects; ``0``: all of it).
- ``GIT_SUBMODULE_STRATEGY``: only ``none`` (the default). Submodules are refused by name
  rather than skipped: their URLs come from the repository's ``.gitmodules``, and fetching
  them needs the same hardening and trust decisions as the repository itself.

>>> git_options({"GIT_DEPTH": "3"})
GitOptions(strategy='fetch', depth=3)
>>> git_options({"GIT_STRATEGY": "pull"})
"GIT_STRATEGY is 'pull'; use fetch, clone or none"
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pipelines.forges.mirror import DEFAULT_DEPTH

MAX_DEPTH = 100_000


@dataclass(frozen=True, slots=True)
class GitOptions:
    strategy: Literal["none", "fetch", "clone"] = "fetch"
    depth: int = DEFAULT_DEPTH

    @property
    def checkout(self) -> bool:
        return self.strategy != "none"


def git_options(env: Mapping[str, str]) -> GitOptions | str:
    """The job's checkout options, or a sentence saying which variable is wrong and how.

    >>> git_options({"GIT_STRATEGY": "none"}).checkout
    False
    >>> git_options({"GIT_SUBMODULE_STRATEGY": "recursive"})  # doctest: +ELLIPSIS
    'GIT_SUBMODULE_STRATEGY recursive is not supported...'
    """
    strategy = (env.get("GIT_STRATEGY") or "fetch").strip().lower()
    if strategy == "empty":
        strategy = "none"
    if strategy not in ("none", "fetch", "clone"):
        return f"GIT_STRATEGY is {strategy[:40]!r}; use fetch, clone or none"
    submodules = (env.get("GIT_SUBMODULE_STRATEGY") or "none").strip().lower()
    if submodules != "none":
        return (f"GIT_SUBMODULE_STRATEGY {submodules[:40]} is not supported: sandpit checks out no submodules; "
                "leave it unset (or `none`) and fetch what the job needs in its script")
    text = (env.get("GIT_DEPTH") or "").strip()
    if not text:
        depth = DEFAULT_DEPTH
    elif text.isdigit() and int(text) <= MAX_DEPTH:
        depth = int(text)
    else:
        return f"GIT_DEPTH is {text[:40]!r}; use a number of commits (0: the whole history)"
    return GitOptions(strategy, depth)  # type: ignore[arg-type]  # checked above
