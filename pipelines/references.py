"""Image references: docker's reference grammar, and which ones sandpit's own recipes honour (pure).

A job's ``image:`` and ``sandpit exec --image`` are text from a stranger. Before it reaches the
image store it must parse as a docker-style reference (the grammar of distribution/reference,
which registries and ``docker pull`` use)::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path
    domain     := host [ ":" port ]          host: DNS labels, or "localhost"
    path       := component ( "/" component )*
    component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
    digest     := "sha256:" 64 lowercase hex

so nothing that names a host path (``/proc/self/cwd/evil``, ``../x``, ``a//b``), carries a mount
option separator or a control character, or is longer than 255 characters gets any further. The
grammar is written out here rather than taken from a library: the Python ports of it on PyPI are
unmaintained, and it is six regular expressions with ASCII-only classes (``re.ASCII``: ``\\w``
would otherwise accept any Unicode letter).

Which references *run* is a second question: :func:`honoured_by` says which recipe in ``images/``
provides one (its name, and its ``provides`` list); anything else comes from the image store or a
pull (``worker/sandbox/images.py``, docs/images.md).
Nothing is ever mapped to something else: ``python:3.12`` is pulled as itself or refused, never run as 3.11.

>>> parse_reference("python:3.11")
ImageReference(domain=None, path='python', tag='3.11', digest=None)
>>> str(parse_reference("localhost:5000/team/app:v1"))
'localhost:5000/team/app:v1'
"""

from __future__ import annotations

import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

MAX_NAME_LENGTH = 255  # distribution/reference's NameTotalLengthMax

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
# patterns as text, compiled by re's cache on first use: nothing is compiled at import, which is on
# `sandpit exec`'s start-up path
_PATH = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*(?::[0-9]{{1,5}})?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"sha256:[0-9a-f]{64}"


def _full(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern, text, re.ASCII) is not None


class InvalidReference(ValueError):
    """The text is not an image reference; the message says why, in one sentence."""


class ImageReference:
    """A parsed reference. A plain class, not a dataclass: this is on ``sandpit exec``'s start-up
    path, where importing dataclasses alone cost ~15 ms (see pipelines/record.py)."""

    __slots__ = ("digest", "domain", "path", "tag")

    def __init__(self, domain: str | None, path: str, tag: str | None = None, digest: str | None = None) -> None:
        self.domain, self.path, self.tag, self.digest = domain, path, tag, digest

    def _fields(self) -> tuple[str | None, str, str | None, str | None]:
        return (self.domain, self.path, self.tag, self.digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageReference) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"ImageReference(domain={self.domain!r}, path={self.path!r}, tag={self.tag!r}, "
                f"digest={self.digest!r})")

    def __str__(self) -> str:
        text = f"{self.domain}/{self.path}" if self.domain else self.path
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _quoted(text: str) -> str:
    """``text`` shortened and with control characters escaped, safe in a one-line message."""
    shown = text if len(text) <= 80 else text[:77] + "..."
    return repr(shown)


def parse_reference(text: str) -> ImageReference:
    """``text`` as an image reference, or :class:`InvalidReference` saying what is wrong.

    The first path component is a registry host when it has a ``.`` or a ``:`` or is
    ``localhost`` (docker's rule), so ``team/app`` is a path and ``ghcr.io/team/app`` names a host.

    >>> parse_reference("ghcr.io/team/app@sha256:" + "a" * 64).domain
    'ghcr.io'
    >>> parse_reference("/proc/self/cwd/evil")
    Traceback (most recent call last):
    ...
    pipelines.references.InvalidReference: '/proc/self/cwd/evil' is not an image reference: ...
    """
    if not isinstance(text, str) or not text:
        raise InvalidReference("the image reference is empty: name an image such as debian")
    rest, digest = text, None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not _full(_DIGEST, digest):
            raise InvalidReference(
                f"{_quoted(text)} is not an image reference: its digest is not sha256: and 64 lowercase hex digits")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:  # a ':' after the last '/' starts the tag; before it, it is a registry port
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _full(_TAG, tag):
            raise InvalidReference(
                f"{_quoted(text)} is not an image reference: its tag may have letters, digits, '_', '.' and '-' "
                "(up to 128, not starting with '.' or '-')")
    if len(rest) > MAX_NAME_LENGTH:
        raise InvalidReference(f"{_quoted(text)} is not an image reference: longer than {MAX_NAME_LENGTH} characters")
    domain = None
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if not _full(_DOMAIN, first):
            raise InvalidReference(f"{_quoted(text)} is not an image reference: {first!r} is not a registry host")
        domain, rest = first, remainder
    if not _full(_PATH, rest):
        raise InvalidReference(
            f"{_quoted(text)} is not an image reference: write [registry/]name[:tag] with lowercase "
            "letters, digits and single separators (. _ __ -) between '/'-separated parts, e.g. debian:12")
    return ImageReference(domain, rest, tag, digest)


def reference_problem(text: str) -> str | None:
    """The sentence :func:`parse_reference` would raise, or None when ``text`` parses.

    >>> reference_problem("debian") is None
    True
    >>> reference_problem("Debian")
    "'Debian' is not an image reference: write [registry/]name[:tag] with lowercase letters, \
digits and single separators (. _ __ -) between '/'-separated parts, e.g. debian:12"
    """
    try:
        parse_reference(text)
    except InvalidReference as exc:
        return str(exc)
    return None


def honoured_by(text: str, provided: Mapping[str, str]) -> str:
    """The recipe that honours reference ``text``, given ``provided`` (reference → recipe, as the
    recipes declare it); :class:`InvalidReference` when none does, naming what exists.

    A bare name means the recipe of that name (``python`` → the ``python`` recipe); a tag must
    be one the recipe lists; a registry host or a digest is never a recipe's (the store or a pull may
    have it: ``ImageStore.get``).

    >>> provided = {"python": "python", "python:3.11": "python", "debian": "debian"}
    >>> honoured_by("python:3.11", provided)
    'python'
    >>> honoured_by("python:3.12", provided)
    Traceback (most recent call last):
    ...
    pipelines.references.InvalidReference: no image python:3.12 here: ...
    """
    ref = parse_reference(text)
    known = ", ".join(sorted(provided)) or "none"
    if ref.domain is not None or ref.digest is not None:
        what = "a registry host" if ref.domain is not None else "a digest"
        raise InvalidReference(
            f"image {ref} names {what}, which no recipe provides (sandpit pulls only from the registries "
            "the operator lists in SANDPIT_REGISTRIES): "
            f"use one of the images built here ({known})")
    recipe = provided.get(str(ref))
    if recipe is None:
        raise InvalidReference(
            f"no image {ref} here: sandpit runs only what its recipes provide ({known}); "
            "it never substitutes another version")
    return recipe


def recipe_provides(recipe: str, declared: tuple[str, ...]) -> dict[str, str]:
    """The references one recipe honours: its own name, and each declared reference (which must
    parse and be untagged-or-tagged names without host or digest, else :class:`InvalidReference`).

    >>> recipe_provides("debian", ("debian:12",))
    {'debian': 'debian', 'debian:12': 'debian'}
    """
    out = {str(parse_reference(recipe)): recipe}
    for text in declared:
        ref = parse_reference(text)
        if ref.domain is not None or ref.digest is not None:
            raise InvalidReference(f"recipe {recipe}: 'provides' entry {text!r} may not name a registry or digest")
        out[str(ref)] = recipe
    return out
