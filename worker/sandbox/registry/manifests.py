"""OCI and Docker v2 manifests, image indexes and image configs, read from untrusted bytes (pure).

Every field that sandpit will use is checked here: digests are ``sha256:`` + 64 hex (they become
file names), sizes are non-negative integers, media types are ones sandpit can unpack, and the
config's ``diff_ids`` match the layer count. A registry's bytes that fail any of it raise
:class:`ManifestError` naming the field.

>>> raw = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", ' \\
...       b'"config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:' + b"a" * 64 + \\
...       b'", "size": 2}, "layers": []}'
>>> parse_manifest(raw).config.size
2
"""

from __future__ import annotations

import hashlib
import json
import os
import re

from pipelines.record import record
from worker import TYPE_CHECKING
from worker.errors import ImageError

if TYPE_CHECKING:
    from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_V1 = ("application/vnd.docker.distribution.manifest.v1+json",
             "application/vnd.docker.distribution.manifest.v1+prettyjws")
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_LIST)
CONFIGS = ("application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")
LAYERS = (
    "application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd", "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar", "application/vnd.docker.image.rootfs.diff.tar.zstd",
)
MAX_LAYERS = 127  # overlayfs stacks at most 500 lowers, and the lowerdir option must fit one page
_DIGEST = r"sha256:[0-9a-f]{64}"
_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


class ManifestError(ImageError):
    """A manifest, index or config that sandpit cannot use; the message names what is wrong."""


@record(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int


@record(frozen=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]


@record(frozen=True)
class ImageConfig:
    """What sandpit keeps of an image's config: how a container of it starts, and its layers' diff_ids."""

    diff_ids: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    ports: tuple[str, ...] = ()  # ExposedPorts, e.g. "5432/tcp" (for services)
    platform: str = ""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_digest(text: object) -> bool:
    return isinstance(text, str) and re.fullmatch(_DIGEST, text, re.ASCII) is not None


def host_platform(machine: str | None = None) -> tuple[str, str, str]:
    """(os, architecture, variant) in OCI's words for this machine.

    >>> host_platform("x86_64"), host_platform("aarch64")
    (('linux', 'amd64', ''), ('linux', 'arm64', 'v8'))
    """
    machine = machine or os.uname().machine
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le",
            "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)
    variant = {"aarch64": "v8", "armv7l": "v7"}.get(machine, "")
    return "linux", arch, variant


def _json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ManifestError(f"the {what} is not JSON") from None
    if not isinstance(data, dict):
        raise ManifestError(f"the {what} is not a JSON object")
    return data


def _descriptor(value: object, what: str, types: tuple[str, ...] | None) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestError(f"the manifest's {what} is not an object")
    media, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not is_digest(digest):
        raise ManifestError(f"the manifest's {what} digest is not sha256: and 64 hex digits")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"the manifest's {what} size is not a whole number")
    if value.get("urls"):
        raise ManifestError(f"the manifest's {what} is a foreign layer (fetched from other URLs): sandpit "
                            "pulls only from the registry")
    if not isinstance(media, str) or (types is not None and media not in types):
        raise ManifestError(f"the manifest's {what} has media type {str(media)[:100]!r}, which sandpit cannot use")
    assert isinstance(digest, str)
    return Descriptor(media, digest, size)


def media_type(raw: bytes) -> str:
    """The media type a manifest or index says it is (``schemaVersion: 1`` is refused)."""
    data = _json(raw, "manifest")
    media = data.get("mediaType")
    if data.get("schemaVersion") == 1 or media in DOCKER_V1:
        raise ManifestError("the image has a Docker schema 1 manifest (deprecated since 2017): re-push it "
                            "with a current client")
    if media is None:  # OCI allows leaving it out: tell by the content
        media = OCI_INDEX if "manifests" in data else OCI_MANIFEST
    if media not in MANIFESTS + INDEXES:
        raise ManifestError(f"the manifest has media type {str(media)[:100]!r}, which sandpit cannot use")
    return str(media)


def parse_manifest(raw: bytes) -> Manifest:
    """An image manifest (OCI or Docker v2 schema 2)."""
    data = _json(raw, "manifest")
    if media_type(raw) not in MANIFESTS:
        raise ManifestError("expected an image manifest, got an index")
    config = _descriptor(data.get("config"), "config", (*CONFIGS, "application/octet-stream"))
    layers = data.get("layers")
    if not isinstance(layers, list):
        raise ManifestError("the manifest's layers are not a list")
    if len(layers) > MAX_LAYERS:
        raise ManifestError(f"the image has {len(layers)} layers; sandpit stacks at most {MAX_LAYERS}")
    return Manifest(config, tuple(_descriptor(layer, f"layer {i + 1}", LAYERS) for i, layer in enumerate(layers)))


def choose_platform(raw: bytes, platform: tuple[str, str, str] | None = None) -> Descriptor:
    """The manifest an index lists for this host's platform (a variant is matched when both say one).

    >>> index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
    ...     {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "a" * 64, "size": 1,
    ...      "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
    ...     {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "b" * 64, "size": 1,
    ...      "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    >>> choose_platform(index, ("linux", "amd64", "")).digest[-4:]
    'bbbb'
    """
    data = _json(raw, "index")
    want_os, want_arch, want_variant = platform or host_platform()
    entries = data.get("manifests")
    if not isinstance(entries, list):
        raise ManifestError("the index's manifests are not a list")
    seen = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        plat = _object(entry.get("platform"))
        os_, arch, variant = plat.get("os"), plat.get("architecture"), plat.get("variant") or ""
        seen.append(f"{os_}/{arch}{'/' + variant if variant else ''}")
        if os_ == want_os and arch == want_arch and (not variant or not want_variant or variant == want_variant):
            return _descriptor(entry, f"index entry {i + 1}", MANIFESTS)
    shown = ", ".join(sorted(set(seen))[:12]) or "none"
    raise ManifestError(f"the image has no variant for this host's platform {want_os}/{want_arch} "
                        f"(it has: {shown[:300]})")


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _strings(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and "\0" not in v for v in value):
        raise ManifestError(f"the image config's {what} is not a list of strings")
    return tuple(value)


def parse_config(raw: bytes) -> tuple[ImageConfig, tuple[str, ...]]:
    """The image config, and the env entries left out (a name outside ``[A-Za-z_][A-Za-z0-9_]*``
    or without ``=``: they would reach the job's environment, so they pass the same grammar as a
    recipe's env)."""
    data = _json(raw, "image config")
    rootfs = data.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(is_digest(d) for d in diff_ids):
        raise ManifestError("the image config's rootfs.diff_ids are not a list of sha256 digests")
    cfg = _object(data.get("config"))
    env, dropped = [], []
    for entry in _strings(cfg.get("Env"), "Env"):
        name, sep, value = entry.partition("=")
        if sep and re.fullmatch(_ENV_NAME, name, re.ASCII):
            env.append((name, value))
        else:
            dropped.append(entry[:80])
    workdir = "" if cfg.get("WorkingDir") is None else cfg["WorkingDir"]
    user = "" if cfg.get("User") is None else cfg["User"]
    if not isinstance(workdir, str) or not isinstance(user, str) or "\0" in workdir + user:
        raise ManifestError("the image config's WorkingDir or User is not a string")
    ports = _object(cfg.get("ExposedPorts"))
    return ImageConfig(
        diff_ids=tuple(diff_ids), env=tuple(env), entrypoint=_strings(cfg.get("Entrypoint"), "Entrypoint"),
        cmd=_strings(cfg.get("Cmd"), "Cmd"), workdir=workdir, user=user,
        ports=tuple(sorted(str(p)[:32] for p in ports)[:64]),
        platform=f"{data.get('os', '')}/{data.get('architecture', '')}",
    ), tuple(dropped)
