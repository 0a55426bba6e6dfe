"""Image references as a registry reads them, and which registries sandpit may pull from (pure).

``node:20`` means ``docker.io/library/node:20`` and ``team/app`` means ``docker.io/team/app:latest``,
as ``docker pull`` reads them; the canonical text is what the store keys its names by, so
``node:20`` and ``docker.io/library/node:20`` are one image.

Which registries a pipeline may name is the operator's list (``SANDPIT_REGISTRIES``): the pull
runs on the worker host, with the host's network, before any sandbox exists, so a registry host
written in a pipeline would otherwise let a job's author make the host connect anywhere
(``image: 10.0.0.5:8080/x``), past the egress policy that binds the job itself. Mirrors
(``registries.conf``) are applied after this check, to the registry the reference names.

>>> str(canonical(parse_reference("node:20")))
'docker.io/library/node:20'
>>> pull_allowed("127.0.0.1:5000", ("docker.io", "127.0.0.1:5000")), pull_allowed("evil.example", ("docker.io",))
(True, False)
"""

from __future__ import annotations

import hashlib

from pipelines.references import ImageReference, parse_reference

__all__ = ["DOCKER_HUB", "canonical", "name_key", "parse_reference", "pull_allowed", "repository"]

DOCKER_HUB = "docker.io"
_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")


def canonical(ref: ImageReference) -> ImageReference:
    """The fully qualified reference: a registry host (Docker Hub by default, its ``library/``
    namespace for one-component names) and a tag (``latest`` unless a tag or digest is given).

    >>> str(canonical(parse_reference("team/app"))), str(canonical(parse_reference("x@sha256:" + "a" * 64)))[:30]
    ('docker.io/team/app:latest', 'docker.io/library/x@sha256:aaa')
    >>> str(canonical(parse_reference("index.docker.io/library/debian:12")))
    'docker.io/library/debian:12'
    """
    domain = ref.domain or DOCKER_HUB
    if domain in _HUB_ALIASES:
        domain = DOCKER_HUB
    path = ref.path
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    tag = ref.tag if ref.tag is not None or ref.digest is not None else "latest"
    return ImageReference(domain, path, tag, ref.digest)


def repository(ref: ImageReference) -> str:
    """``host/path`` of a canonical reference, without tag or digest.

    >>> repository(canonical(parse_reference("node:20")))
    'docker.io/library/node'
    """
    return f"{ref.domain}/{ref.path}"


def name_key(ref: ImageReference) -> str:
    """The file name (64 hex) under which the store keeps what ``ref`` points at: the sha256 of its
    canonical text, so no character of the reference ever reaches a path.

    >>> len(name_key(canonical(parse_reference("debian"))))
    64
    """
    return hashlib.sha256(str(ref).encode()).hexdigest()


def pull_allowed(domain: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether the operator lets sandpit pull from ``domain`` (``*`` allows every registry).

    >>> pull_allowed(None, ("docker.io",)), pull_allowed("ghcr.io", ("*",)), pull_allowed("docker.io", ())
    (True, True, False)
    """
    host = DOCKER_HUB if domain is None or domain in _HUB_ALIASES else domain
    return "*" in allowed or host in allowed or (host == DOCKER_HUB and any(a in _HUB_ALIASES for a in allowed))
