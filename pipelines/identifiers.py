"""Grammars for the identifiers that become parts of host paths: layer keys and digests, job
ids, run ids, uid slots, cache keys, artifact paths (pure).

sandpit builds host paths such as ``<state>/jobs/<job id>``, ``<state>/images/layers/<key>`` and
``<run>/locks/uid-<slot>.lock`` from values that came from a request, a pipeline or a stored
record. Each value passes the check here before it is joined to anything: a check that is a
whole-string match of a small grammar, so ``..``, ``/``, ``:``, ``,``, NUL, newlines and other
control characters never reach a path, a mount option or a command line. The checks live in
``pipelines/`` because the API (run and job ids), the language (artifact paths, cache keys) and
the worker (everything) all need them and ``pipelines`` is the room every one of them may import.

>>> is_layer_key("0" * 64), is_layer_key("../../x")
(True, False)
"""

from __future__ import annotations

import re

# patterns as text, compiled by re's cache on first use (nothing compiled at import: this is on
# `sandpit exec`'s start-up path)
_HEX64 = r"[0-9a-f]{64}"
_DIGEST = r"sha256:[0-9a-f]{64}"
# uuid4 text (run and job ids from the store) and the 12 hex digits of a `sandpit exec` job:
# lowercase letters, digits and inner '-', at most 64 characters
_JOB_ID = r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?"
_RUN_ID = _JOB_ID
_SLOT = r"0|[1-9][0-9]{0,5}"
_CONTROL = r"[\x00-\x1f\x7f]"


def _full(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern, text, re.ASCII) is not None


class InvalidIdentifier(ValueError):
    """A value failed its grammar; the message says which value and what it should look like."""


def is_sha256_hex(text: object) -> bool:
    """A bare sha256: 64 lowercase hex digits, nothing else (not even a trailing newline). The
    names of content-addressed files (artifact blobs, cache manifests) must pass it before
    ``store/<sha[:2]>/<sha>`` is built from a stored record.

    >>> is_sha256_hex("ab" * 32), is_sha256_hex("../" * 21 + "x"), is_sha256_hex("ab" * 32 + "\\n")
    (True, False, False)
    """
    return isinstance(text, str) and _full(_HEX64, text)


def is_layer_key(text: object) -> bool:
    """A layer key as the image store names layers today: the sha256 of the recipe, 64 lowercase
    hex digits, nothing else.

    >>> is_layer_key("A" * 64), is_layer_key("a" * 64 + "\\n")
    (False, False)
    """
    return is_sha256_hex(text)


def is_digest(text: object) -> bool:
    """A content digest: ``sha256:`` and 64 lowercase hex digits.

    >>> is_digest("sha256:" + "0" * 64), is_digest("sha512:" + "0" * 128)
    (True, False)
    """
    return isinstance(text, str) and _full(_DIGEST, text)


def is_job_id(text: object) -> bool:
    """A job id: lowercase letters, digits and inner ``-``, 1 to 64 characters (a uuid4, or the
    12 hex digits ``sandpit exec`` makes).

    >>> is_job_id("3f2a9c0d1e4b"), is_job_id("c9d5e7a2-61b4-4f0a-9d3e-2b8f1a6c7d90"), is_job_id("../x")
    (True, True, False)
    """
    return isinstance(text, str) and _full(_JOB_ID, text)


def is_run_id(text: object) -> bool:
    """A run id: the same grammar as a job id.

    >>> is_run_id("c9d5e7a2-61b4-4f0a-9d3e-2b8f1a6c7d90"), is_run_id("a/b")
    (True, False)
    """
    return isinstance(text, str) and _full(_RUN_ID, text)


def is_uid_slot(text: object, slots: int | None = None) -> bool:
    """A uid slot number as written in a file: decimal, no sign, no leading zero, no space; below
    ``slots`` when given.

    >>> is_uid_slot("3"), is_uid_slot("03"), is_uid_slot("3\\n"), is_uid_slot("7", slots=4)
    (True, False, False, False)
    """
    if not isinstance(text, str) or not _full(_SLOT, text):
        return False
    return slots is None or int(text) < slots


def cache_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be a cache key (GitLab's rule: not ``.`` or ``..``, no ``/`` and no
    ``%2F``/``%2E`` spelling of them), plus no backslash, no control character and at most 255
    characters; None when it is fine.

    >>> cache_key_problem("deps-3.11") is None, cache_key_problem("a/b")
    (True, "cache key 'a/b' contains '/' (or %2F): use letters, digits, '-', '_' and '.'")
    """
    if not key:
        return "the cache key is empty"
    if len(key) > 255:
        return "the cache key is longer than 255 characters"
    if re.search(_CONTROL, key):
        return f"cache key {key!r} contains a control character"
    if "/" in key or "\\" in key or "%2f" in key.lower() or "%5c" in key.lower():
        return f"cache key {key!r} contains '/' (or %2F): use letters, digits, '-', '_' and '.'"
    if key.lower().replace("%2e", ".") in (".", ".."):
        return f"cache key {key!r} is '.' or '..'"
    return None


def artifact_path_problem(path: str) -> str | None:
    """Why ``path`` cannot be the workspace-relative path of a kept file; None when it can.
    Relative, no empty, ``.`` or ``..`` component, no NUL or other control character, no
    backslash (a second separator on some download clients), at most 4096 bytes.

    >>> artifact_path_problem("dist/app.tar") is None, artifact_path_problem("a/../../etc")
    (True, "artifact path 'a/../../etc' has a '..' component")
    """
    if not path:
        return "the artifact path is empty"
    if len(path.encode("utf-8", "surrogateescape")) > 4096:
        return "the artifact path is longer than 4096 bytes"
    if re.search(_CONTROL, path):
        return f"artifact path {path!r} contains a control character"
    if path.startswith("/"):
        return f"artifact path {path!r} is absolute"
    if "\\" in path:
        return f"artifact path {path!r} contains a backslash"
    for part in path.split("/"):
        if part == "..":
            return f"artifact path {path!r} has a '..' component"
        if part in ("", "."):
            return f"artifact path {path!r} has an empty or '.' component"
    return None


def require(valid: bool, what: str, value: object, expected: str) -> None:
    """Raise :class:`InvalidIdentifier` unless ``valid``: one sentence naming the value (escaped).

    >>> require(is_job_id("a b"), "job id", "a b", "lowercase letters, digits and '-'")
    Traceback (most recent call last):
    ...
    pipelines.identifiers.InvalidIdentifier: job id 'a b' is not valid: expected lowercase letters, digits and '-'
    """
    if not valid:
        shown = value if not isinstance(value, str) or len(value) <= 80 else value[:77] + "..."
        raise InvalidIdentifier(f"{what} {shown!r} is not valid: expected {expected}")
