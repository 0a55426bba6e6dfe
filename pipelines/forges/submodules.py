"""Which submodules of a commit are checked out, from where, and into which path (pure).

A submodule's URL and path come from the repository (its ``.gitmodules``), so from whoever
wrote the commit, and its fetch runs on the host: every one is judged here before anything is
fetched. The rules:

- ``.gitmodules`` is read as data (``git config -z --list --blob``, never executed, no
  includes) and given here as that listing (:func:`parse_gitmodules`). ``update = !command`` is
  refused (git refuses it from ``.gitmodules`` too), ``update = none`` skips the submodule.
- The commit checked out is the one the parent's tree records (its gitlink), never a branch tip.
  A gitlink with no ``.gitmodules`` entry is refused, as ``git submodule update`` refuses it.
- A URL is relative (``./x``, ``../x``: resolved against the parent's URL as git resolves it)
  or ``git://``/``http://``/``https://``; then it must be the clone URL of a repository
  registered with sandpit (compared without credentials, case of the host, a trailing ``/`` or
  ``.git``), and it is fetched from *that registration's* clone URL into that repository's own
  mirror. Anything else — ``ext::`` (runs a command), ``file://`` or a host path, ``ssh``/``scp``
  syntax (the host's keys), an option-like ``-u…``, a repository sandpit does not know — is
  refused with the submodule's path and URL. ``GIT_SUBMODULE_FORCE_HTTPS`` rewrites ssh and scp
  URLs to ``https://`` first, as GitLab's runner does.
- An untrusted run (a fork's pull request) checks out no submodule from another repository:
  its code could read a registered repository it was never given, as with ``include: project``.
- A path is inside the tree: no ``..``, ``.`` or ``.git`` component, not absolute, of the
  characters sandpit checks out, the gitlink itself in the tree and every directory on the way a
  directory of the tree — not a symlink. The same for the names (``.git/modules/<name>``).

::

    SubmoduleRefused    a submodule that is not checked out, with its path, URL and why

>>> resolve_url("git://h/acme/app.git", "../lib.git")
'git://h/acme/lib.git'
>>> canonical_url("HTTPS://tok@Git.Example/Acme/Lib.git/")
'https://git.example/Acme/Lib'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

ALLOWED = ("git://", "http://", "https://")
MAX_SUBMODULES = 100
MAX_NESTING = 8
_PATH = re.compile(r"[A-Za-z0-9._/ +@-]{1,255}")
_SCP = re.compile(r"(?:[A-Za-z0-9._-]+@)?([A-Za-z0-9.-]+):(?!//)(.+)")
GITLINK, TREE, LINK = "160000", "040000", "120000"


class SubmoduleRefused(Exception):
    """A submodule that is not checked out (the job fails with this sentence)."""


@dataclass(frozen=True, slots=True)
class Declared:
    """One ``[submodule "name"]`` section of ``.gitmodules``."""

    name: str
    path: str = ""
    url: str = ""
    update: str = ""
    shallow: bool = False


@dataclass(frozen=True, slots=True)
class Registered:
    """A repository sandpit knows, a submodule may come from: its mirror's id and clone URL."""

    repo_id: str
    clone_url: str


@dataclass(frozen=True, slots=True)
class Submodule:
    """A submodule to check out: ``sha`` of ``source`` at ``path``, its git dir named ``name``;
    ``url`` is what the job's ``.git`` records (resolved, without credentials)."""

    name: str
    path: str
    url: str
    sha: str
    source: Registered
    depth: int


def parse_gitmodules(listing: str) -> dict[str, Declared]:
    """The sections of a ``git config -z --list`` listing of ``.gitmodules``, by name.

    >>> parse_gitmodules("submodule.lib.path\\nvendor/lib\\0submodule.lib.url\\n../lib.git\\0")
    {'lib': Declared(name='lib', path='vendor/lib', url='../lib.git', update='', shallow=False)}
    """
    fields: dict[str, dict[str, str]] = {}
    for entry in listing.split("\0"):
        key, _newline, value = entry.partition("\n")
        if not key.startswith("submodule."):
            continue
        name, _dot, var = key[len("submodule."):].rpartition(".")
        if name and var in ("path", "url", "update", "shallow"):
            fields.setdefault(name, {})[var] = value
    return {name: Declared(name, got.get("path", ""), got.get("url", ""), got.get("update", "").strip(),
                           got.get("shallow", "").strip().lower() in ("true", "yes", "on", "1"))
            for name, got in fields.items()}


def canonical_url(url: str) -> str:
    """A clone URL as compared with another: scheme and host in lower case, no credentials, no
    trailing ``/`` or ``.git`` (``https://h/a/b`` and ``https://u@H/a/b.git`` are one repository)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2].lower()
    path = parts.path.rstrip("/")
    path = path[:-4] if path.endswith(".git") else path
    return f"{parts.scheme.lower()}://{host}{path.rstrip('/')}"


def public_url(url: str) -> str:
    """``url`` without its credentials (what a job's ``.git`` may record).

    >>> public_url("https://bot:tok@h/a.git")
    'https://h/a.git'
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def resolve_url(parent: str, url: str, *, force_https: bool = False) -> str:
    """The absolute URL of a submodule whose ``.gitmodules`` URL is ``url`` in a repository
    fetched from ``parent``; :class:`ValueError` with the reason when it is not one sandpit
    fetches (see the module docstring).

    >>> resolve_url("https://h/g/app", "./sub")
    'https://h/g/app/sub'
    >>> resolve_url("git://h/app.git", "ext::sh -c touch% /tmp/x")
    Traceback (most recent call last):
    ...
    ValueError: the ext:: transport runs a command on the host
    """
    if any((char.isspace() and char != " ") or ord(char) < 32 for char in url) or not url:
        raise ValueError("it is empty or has a control character")
    if url.startswith("-"):
        raise ValueError("it starts with '-' (it would be read as an option)")
    if url.startswith(("./", "../")):
        return _relative(parent, url)
    if force_https:
        url = _as_https(url)
    if url.startswith(ALLOWED):
        if " " in url:
            raise ValueError("it has a space")
        return url
    if url.startswith("ext::") or "::" in url.split("/")[0]:
        raise ValueError("the ext:: transport runs a command on the host" if url.startswith("ext::")
                         else "a remote helper transport (<helper>::) is not one sandpit fetches with")
    if url.startswith(("file:", "/", "~")) or url in (".", ".."):
        raise ValueError("it names files on the host")
    if url.startswith("ssh://") or _SCP.fullmatch(url):
        raise ValueError("ssh would use the host's keys (set GIT_SUBMODULE_FORCE_HTTPS: true to fetch it over https)")
    raise ValueError("only git://, http:// and https:// URLs, or ones relative to the repository (../lib.git), "
                     "are fetched")


def _relative(parent: str, url: str) -> str:
    parts = urlsplit(parent.rstrip("/"))
    segments = [s for s in parts.path.split("/") if s]
    rest = url
    while rest.startswith(("./", "../")):
        if rest.startswith("../"):
            if not segments:
                raise ValueError(f"it climbs above the host of {public_url(parent)}")
            segments.pop()
            rest = rest[3:]
        else:
            rest = rest[2:]
    tail = [s for s in rest.split("/") if s]
    if not tail or any(s in (".", "..") for s in tail) or " " in rest:
        raise ValueError("it is not a path relative to the repository's URL")
    return f"{parts.scheme}://{parts.netloc}/{'/'.join(segments + tail)}"


def _as_https(url: str) -> str:
    """GitLab's GIT_SUBMODULE_FORCE_HTTPS: ``git@h:g/p.git`` and ``ssh://git@h[:port]/g/p.git``
    are fetched as ``https://h/g/p.git``."""
    if url.startswith("ssh://"):
        parts = urlsplit(url)
        host = parts.hostname or ""
        return f"https://{host}{parts.path}" if host else url
    match = _SCP.fullmatch(url)
    if match and "/" not in match.group(1):
        return f"https://{match.group(1)}/{match.group(2).lstrip('/')}"
    return url


def check_path(path: str, modes: Mapping[str, str], what: str = "path") -> str:
    """Why ``path`` (of a submodule, against the parent tree's ``modes`` by path) is not checked
    out into; ``""`` when it may be.

    >>> check_path("vendor/lib", {"vendor": "040000", "vendor/lib": "160000"})
    ''
    >>> check_path("link/lib", {"link": "120000"})
    'link is a symlink in the tree'
    """
    if path.startswith("/"):
        return f"the {what} is absolute"
    parts = path.split("/")
    if not _PATH.fullmatch(path) or any(p in ("", ".", "..") or p.lower() == ".git" for p in parts):
        return f"the {what} is not a plain path inside the tree (no '..', '.', '.git' or unusual characters)"
    for depth in range(1, len(parts)):
        leading = "/".join(parts[:depth])
        mode = modes.get(leading)
        if mode == LINK:
            return f"{leading} is a symlink in the tree"
        if mode is not None and mode != TREE:
            return f"{leading} is not a directory in the tree"
    return ""


def check_name(name: str) -> str:
    """Why a submodule ``name`` cannot name its git dir (``.git/modules/<name>``); ``""`` if it can.

    >>> check_name("../../hooks")
    "the name is not a plain path inside the tree (no '..', '.', '.git' or unusual characters)"
    """
    return check_path(name, {}, "name")


def plan_submodules(
    declared: Mapping[str, Declared], gitlinks: Mapping[str, str], modes: Mapping[str, str], parent_url: str, *,
    depth: int, recommend_shallow: bool, force_https: bool, selects: Callable[[str], bool],
    registered: Callable[[str], Registered | None], own_repo: str | None,
) -> list[Submodule]:
    """The submodules of one tree to check out, or :class:`SubmoduleRefused` naming the first
    one that cannot be (``gitlinks``: the tree's gitlinks, path → commit; ``selects``: whether
    ``GIT_SUBMODULE_PATHS`` keeps a path; ``registered``: the repository of a canonical URL;
    ``own_repo``: set for an untrusted run, the only repository it may check out)."""
    by_path: dict[str, Declared] = {}
    for entry in declared.values():
        problem = check_name(entry.name) or (check_path(entry.path, modes) if entry.path else "it has no path")
        if problem:
            raise SubmoduleRefused(f"submodule {entry.name!r} (path {entry.path[:100]!r}) in .gitmodules is refused: "
                                   f"{problem}")
        by_path.setdefault(entry.path, entry)
    planned: list[Submodule] = []
    for path in sorted(gitlinks):
        if not selects(path):
            continue
        found = by_path.get(path)
        if found is None:
            raise SubmoduleRefused(f"submodule {path}: the tree has it but .gitmodules has no entry with this path "
                                   "(git submodule update refuses it too)")
        entry = found
        if entry.update.startswith("!"):
            raise SubmoduleRefused(f"submodule {path}: update = {entry.update[:60]!r} in .gitmodules would run a "
                                   "command")
        if entry.update == "none":
            continue
        if entry.update not in ("", "checkout", "rebase", "merge"):
            raise SubmoduleRefused(f"submodule {path}: update = {entry.update[:60]!r} is not a git update mode")
        if check_path(path, modes):
            raise SubmoduleRefused(f"submodule {path}: {check_path(path, modes)}")
        try:
            url = resolve_url(parent_url, entry.url, force_https=force_https)
        except ValueError as exc:
            raise SubmoduleRefused(f"submodule {path}: URL {entry.url[:200]!r} is refused: {exc}") from None
        source = registered(canonical_url(url))
        if source is None:
            raise SubmoduleRefused(
                f"submodule {path}: URL {public_url(url)} is not the clone URL of a repository registered with "
                "sandpit; register it (`sandpit repos add`) or leave GIT_SUBMODULE_STRATEGY unset")
        if own_repo is not None and source.repo_id != own_repo:
            raise SubmoduleRefused(
                f"submodule {path}: URL {public_url(url)} is another repository, and this run is untrusted (a fork's "
                "pull request): it checks out no other repository's code")
        planned.append(Submodule(entry.name, path, public_url(url), gitlinks[path], source,
                                 1 if recommend_shallow and entry.shallow else depth))
    return planned
