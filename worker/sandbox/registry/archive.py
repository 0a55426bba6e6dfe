"""Importing ``docker save`` archives and OCI archives (``oci-archive``) into the store (adapter).

An air-gapped site brings images on a disk: ``sandpit images import FILE``. The archive's own
index names its images (``manifest.json`` with ``RepoTags`` for ``docker save``; ``index.json``
with ``org.opencontainers.image.ref.name`` annotations for an OCI layout), found by reading the
tar's table of contents; ``skopeo copy`` then unpacks each image into a ``dir:`` layout, and from
there it is checked and stored exactly as a pulled one (every blob against its digest, layers
unpacked once per diff_id and shared with pulled images). Docker's layers are plain tars whatever
their media type says; the unpacker tells compression by magic bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import threading
from concurrent.futures import Future
from pathlib import Path

from pipelines.references import InvalidReference, parse_reference
from worker.errors import ImageError, InvalidRequest
from worker.sandbox.registry import manifests as mf
from worker.sandbox.registry.naming import canonical
from worker.sandbox.registry.pull import Landed, Progress, Puller, short
from worker.sandbox.registry.pulled import PulledImage

_INDEX_LIMIT = 4 << 20
_REF_NAME = "org.opencontainers.image.ref.name"


class ArchiveError(ImageError):
    """The file is not an image archive sandpit can read."""


def archive_images(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(skopeo source, the references its index gives it) of each image in the archive."""
    try:
        with tarfile.open(path, "r:*") as tar:
            found = {}
            for member in tar:
                name = member.name.removeprefix("./")
                if name in ("manifest.json", "index.json", "oci-layout") and member.isreg():
                    if member.size > _INDEX_LIMIT:
                        raise ArchiveError(f"{path}: its {name} is larger than {_INDEX_LIMIT} bytes")
                    handle = tar.extractfile(member)
                    assert handle is not None
                    found[name] = handle.read()
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"{path} is not a readable tar archive: {exc}") from None
    if "manifest.json" in found:
        return _docker_images(path, found["manifest.json"])
    if "index.json" in found and "oci-layout" in found:
        return _oci_images(path, found["index.json"])
    raise ArchiveError(f"{path} is neither a `docker save` archive (manifest.json) nor an OCI archive "
                       "(oci-layout, index.json)")


def _docker_images(path: Path, text: bytes) -> list[tuple[str, tuple[str, ...]]]:
    try:
        entries = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise ArchiveError(f"{path}: its manifest.json is not JSON") from None
    if not isinstance(entries, list) or not entries:
        raise ArchiveError(f"{path}: its manifest.json lists no image")
    out = []
    for i, entry in enumerate(entries):
        tags = entry.get("RepoTags") if isinstance(entry, dict) else None
        names = tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else ()
        out.append((f"docker-archive:{path}:@{i}", names))
    return out


def _oci_images(path: Path, text: bytes) -> list[tuple[str, tuple[str, ...]]]:
    try:
        index = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise ArchiveError(f"{path}: its index.json is not JSON") from None
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ArchiveError(f"{path}: its index.json lists no image")
    out: list[tuple[str, tuple[str, ...]]] = []
    for entry in entries:
        annotations = entry.get("annotations") if isinstance(entry, dict) else None
        ref_name = annotations.get(_REF_NAME) if isinstance(annotations, dict) else None
        if isinstance(ref_name, str) and ref_name and ":" not in ref_name.split("/")[-1] and "/" not in ref_name:
            out.append((f"oci-archive:{path}:{ref_name}", ()))  # a bare tag ("1.0"): no image name
        elif isinstance(ref_name, str) and ref_name:
            out.append((f"oci-archive:{path}:{ref_name}", (ref_name,)))
        elif len(entries) == 1:
            out.append((f"oci-archive:{path}", ()))
        else:
            raise ArchiveError(f"{path}: an image of its index has no {_REF_NAME} annotation")
    return out


def import_archive(puller: Puller, path: Path, tag: str | None, progress: Progress,
                   cancel: threading.Event | None = None) -> list[tuple[str, PulledImage]]:
    """Store every image of the archive; returns (canonical reference, image) for each name."""
    path = path.resolve()
    if ":" in str(path) or not path.is_file():
        raise InvalidRequest(f"{path}: not a file sandpit can import (a path with ':' cannot be named to skopeo)")
    images = archive_images(path)
    if tag is not None and len(images) > 1:
        raise InvalidRequest(f"{path} holds {len(images)} images: --tag names one; import it without --tag")
    done = []
    for source, names in images:
        chosen = (tag,) if tag is not None else names
        if not chosen:
            raise InvalidRequest(f"{path}: an image in it has no name; give it one with --tag REF")
        refs = []
        for text in chosen:
            try:
                refs.append(canonical(parse_reference(text)))
            except InvalidReference as exc:
                raise InvalidRequest(f"{path}: {exc}") from None
        image = _import_one(puller, source, str(refs[0]), progress, cancel)
        for ref in refs:
            puller.store.set_name(ref, image.digest)
            done.append((str(ref), image))
    return done


def _import_one(puller: Puller, source: str, reference: str, progress: Progress,
                cancel: threading.Event | None) -> PulledImage:
    puller.store.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = Path(tempfile.mkdtemp(prefix=".import-", dir=puller.store.root))
    try:
        out = tmp / "image"
        puller.skopeo.copy(source, f"dir:{out}", cancel=cancel, log=tmp / "skopeo.log")
        raw = (out / "manifest.json").read_bytes()
        digest = mf.sha256_digest(raw)
        if mf.media_type(raw) in mf.INDEXES:
            raise ArchiveError(f"{source}: skopeo wrote an index, not an image")
        manifest = mf.parse_manifest(raw)
        existing = puller.store.image(digest)
        if existing is not None:
            progress(f"{reference}: {short(digest)} is already in the store")
            return existing
        config_raw = _blob(out, manifest.config)

        def fetch(missing: list[tuple[int, mf.Descriptor, str]], landed: Landed) -> None:
            futures: list[Future[object]] = []
            for i, desc, _key in missing:  # root's skopeo wrote them into root's directory
                fd = os.open(out / desc.digest[7:], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                futures.append(landed(i, desc, fd, lambda: None))  # the folder goes at the end
            for future in futures:
                future.result()

        return puller.store_image(reference, digest, manifest, config_raw, progress, cancel, fetch=fetch,
                                   source="archive")
    except OSError as exc:
        raise ArchiveError(f"importing {source}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _blob(folder: Path, desc: mf.Descriptor) -> bytes:
    fd = os.open(folder / desc.digest[7:], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size > _INDEX_LIMIT:
            raise ArchiveError(f"the config {desc.digest} is larger than {_INDEX_LIMIT} bytes")
        return os.read(fd, _INDEX_LIMIT + 1)
    finally:
        os.close(fd)
