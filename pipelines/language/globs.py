"""File globs as GitLab reads them in ``rules:changes``, ``rules:exists`` and ``include: local`` (pure).

GitLab matches with Ruby's ``File.fnmatch?`` and the flags PATHNAME | DOTMATCH | EXTGLOB: ``*`` and
``?`` stop at ``/``, ``**/`` spans any number of directories (also none), ``{a,b}`` picks one
alternative, ``[abc]`` / ``[!abc]`` are character classes, and dot files match like any other.

>>> glob_matches("src/**/*.{c,h}", "src/lib/x.h"), glob_matches("*.md", "docs/a.md")
(True, False)

``include: local`` reads ``**`` its own way (GitLab's documented include wildcards): ``**`` spans any
depth, none included (``ci/**.yml`` is every ``.yml`` under ``ci/``), while ``**/`` needs at least one
folder (``ci/**/*.yml`` is subfolders of ``ci/`` only); ``*`` stays one path segment.

>>> [include_glob_matches("ci/**.yml", p) for p in ("ci/a.yml", "ci/x/b.yml")]
[True, True]
>>> [include_glob_matches("ci/**/*.yml", p) for p in ("ci/a.yml", "ci/x/b.yml")]
[False, True]
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache


@lru_cache(maxsize=2048)
def compile_glob(pattern: str, include: bool = False) -> re.Pattern[str]:
    """The glob as an anchored regex (a malformed class falls back to a literal match); ``include``
    selects the ``include: local`` reading of ``**``."""
    body = pattern.lstrip("/")
    try:
        return re.compile(_translate(body, 0, len(body), include=include)[0] + r"\Z", re.DOTALL)
    except re.error:
        return re.compile(re.escape(body) + r"\Z")


def include_glob_matches(pattern: str, path: str) -> bool:
    return compile_glob(pattern, include=True).match(path.lstrip("/")) is not None


def glob_matches(pattern: str, path: str) -> bool:
    return compile_glob(pattern).match(path.lstrip("/")) is not None


def any_match(patterns: Iterable[str], paths: Iterable[str]) -> bool:
    """True when any path matches any pattern (``rules:changes`` and ``rules:exists``)."""
    compiled = [compile_glob(p) for p in patterns]
    return any(regex.match(path.lstrip("/")) for path in paths for regex in compiled)


def _translate(pattern: str, start: int, end: int, in_brace: bool = False,
               include: bool = False) -> tuple[str, int]:
    out: list[str] = []
    i = start
    while i < end:
        char = pattern[i]
        if char == "*":
            if pattern.startswith("**/", i):
                out.append("(?:[^/]+/)+" if include else "(?:[^/]*/)*")
                i += 3
                continue
            stars = 0
            while i < end and pattern[i] == "*":
                i += 1
                stars += 1
            out.append(".*" if include and stars >= 2 else "[^/]*")
            continue
        if char == "?":
            out.append("[^/]")
        elif char == "[":
            close = pattern.find("]", i + 2)
            if close == -1:
                out.append(re.escape(char))
            else:
                body = pattern[i + 1 : close]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = close
        elif char == "{":
            alternatives: list[str] = []
            i += 1
            while True:
                text, i = _translate(pattern, i, end, in_brace=True, include=include)
                alternatives.append(text)
                if i >= end or pattern[i] == "}":
                    break
                i += 1  # the comma
            out.append("(?:" + "|".join(alternatives) + ")")
        elif in_brace and char in ",}":
            return "".join(out), i
        elif char == "\\" and i + 1 < end:
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out), i
