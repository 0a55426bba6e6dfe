"""Importing ``docker save`` archives and OCI archives (``oci-archive``) into the store (adapter).

An air-gapped site brings images on a disk: ``sandpit images import FILE``. The archive's own
index names its images (``manifest.json`` with ``RepoTags`` for ``docker save``; ``index.json``
with ``org.opencontainers.image.ref.name`` annotations for an OCI layout), found by reading the
tar's table of contents; ``skopeo copy`` then unpacks each image into a ``dir:`` layout, and from
there it is checked and stored exactly as a pulled one (every blob against its digest, layers
unpacked once per diff_id and shared with pulled images). Docker's layers are plain tars whatever
their media type says; the unpacker tells compression by magic bytes.

skopeo parses an archive whoever made it, so it runs as a pull's does (:mod:`.pull_box`): as an
unprivileged uid of sandpit's range, in a directory of its own, with no credentials. FILE is
opened once, by root, as the operator named it (a symlink in it is followed: the operator chose
the path); that one open file, a regular file, is what the index is read from and what the uid
gets a copy of inside its directory (:meth:`PullBox.copy_in` says why a copy), so a path swapped
for a symlink meanwhile changes nothing, and the uid can read no file of the host but its copy.
What skopeo wrote (the manifest, the config, every layer) is read by fd beneath the directory,
never through a symlink nor from anything but a regular file (:meth:`PullBox.open_file`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tarfile
import threading
from concurrent.futures import Future
from pathlib import Path

from pipelines.references import ImageReference, InvalidReference, parse_reference
from worker.errors import ImageError, InvalidRequest
from worker.sandbox.registry import manifests as mf
from worker.sandbox.registry.naming import canonical
from worker.sandbox.registry.pull import Landed, Progress, Puller, short
from worker.sandbox.registry.pull_box import PullBox
from worker.sandbox.registry.pulled import PulledImage
from worker.sandbox.registry.skopeo import PullError

_INDEX_LIMIT = 4 << 20
_REF_NAME = "org.opencontainers.image.ref.name"


class ArchiveError(ImageError):
    """The file is not an image archive sandpit can read."""


def archive_images(fd: int, path: Path) -> tuple[str, list[tuple[str, tuple[str, ...]]]]:
    """skopeo's transport for the archive open at ``fd`` (``path`` names it in messages), and for
    each image in it, what follows the archive's file in skopeo's source (``:@0``, ``:1.0``, or
    nothing) with the references its index gives the image."""
    try:
        with open(fd, "rb", closefd=False) as handle, tarfile.open(fileobj=handle, mode="r:*") as tar:
            found = {}
            for member in tar:
                name = member.name.removeprefix("./")
                if name in ("manifest.json", "index.json", "oci-layout") and member.isreg():
                    if member.size > _INDEX_LIMIT:
                        raise ArchiveError(f"{path}: its {name} is larger than {_INDEX_LIMIT} bytes")
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    found[name] = extracted.read()
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"{path} is not a readable tar archive: {exc}") from None
    if "manifest.json" in found:
        return "docker-archive", _docker_images(path, found["manifest.json"])
    if "index.json" in found and "oci-layout" in found:
        return "oci-archive", _oci_images(path, found["index.json"])
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
        out.append((f":@{i}", names))
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
            out.append((f":{ref_name}", ()))  # a bare tag ("1.0"): no image name
        elif isinstance(ref_name, str) and ref_name:
            out.append((f":{ref_name}", (ref_name,)))
        elif len(entries) == 1:
            out.append(("", ()))
        else:
            raise ArchiveError(f"{path}: an image of its index has no {_REF_NAME} annotation")
    return out


def import_archive(puller: Puller, path: Path, tag: str | None, progress: Progress,
                   cancel: threading.Event | None = None) -> list[tuple[str, PulledImage]]:
    """Store every image of the archive; returns (canonical reference, image) for each name."""
    path = path.absolute()
    fd = _open_archive(path)
    try:
        transport, images = archive_images(fd, path)
        if tag is not None and len(images) > 1:
            raise InvalidRequest(f"{path} holds {len(images)} images: --tag names one; import it without --tag")
        planned = [(selector, _references(path, (tag,) if tag is not None else names))
                   for selector, names in images]
        done = []
        with puller.box(registry=False) as box:
            assert box.path is not None
            if ":" in str(box.path):
                raise ArchiveError(f"{box.path}: a directory with ':' in its path cannot be named to skopeo")
            try:
                copy = box.copy_in("archive", fd)
            except OSError as exc:
                raise ArchiveError(f"{path}: cannot copy it into {box.path} for skopeo: {exc.strerror}") from None
            for i, (selector, refs) in enumerate(planned):
                image = _import_one(puller, box, i, (f"{transport}:{copy}{selector}",
                                    f"{transport}:{path}{selector}"), str(refs[0]), progress, cancel)
                for ref in refs:
                    puller.store.set_name(ref, image.digest)
                    done.append((str(ref), image))
        return done
    finally:
        os.close(fd)


def _open_archive(path: Path) -> int:
    """FILE opened once, read only; a FIFO, a device or a directory is refused (O_NONBLOCK: a FIFO
    put in its place does not make the import wait for a writer)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidRequest(f"{path}: not a file sandpit can import ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidRequest(f"{path}: not a file sandpit can import (not a regular file)")
    return fd


def _references(path: Path, chosen: tuple[str, ...]) -> list[ImageReference]:
    if not chosen:
        raise InvalidRequest(f"{path}: an image in it has no name; give it one with --tag REF")
    try:
        return [canonical(parse_reference(text)) for text in chosen]
    except InvalidReference as exc:
        raise InvalidRequest(f"{path}: {exc}") from None


def _import_one(puller: Puller, box: PullBox, n: int, sources: tuple[str, str], reference: str,
                progress: Progress, cancel: threading.Event | None) -> PulledImage:
    """Image ``n`` of the archive: ``sources`` is skopeo's source (the box's copy) and the one the
    operator knows (FILE), which messages name."""
    source, shown = sources
    assert box.path is not None
    out = f"image-{n}"
    try:
        puller.skopeo.copy(source, f"dir:{box.path / out}", cancel=cancel, box=box)
    except PullError as exc:  # its message names the box's copy: name FILE instead
        raise type(exc)(str(exc).replace(source, shown)) from None
    try:
        raw = _read_small(box, f"{out}/manifest.json")
        digest = mf.sha256_digest(raw)
        if mf.media_type(raw) in mf.INDEXES:
            raise ArchiveError(f"{shown}: skopeo wrote an index, not an image")
        manifest = mf.parse_manifest(raw)
        existing = puller.store.image(digest)
        if existing is not None:
            progress(f"{reference}: {short(digest)} is already in the store")
            return existing
        config_raw = _read_small(box, f"{out}/{manifest.config.digest[7:]}")

        def fetch(missing: list[tuple[int, mf.Descriptor, str]], landed: Landed) -> None:
            futures: list[Future[object]] = []
            for i, desc, _key in missing:  # each file goes with its image's folder, after the image
                futures.append(landed(i, desc, box.open_file(f"{out}/{desc.digest[7:]}"), lambda: None))
            for future in futures:
                future.result()

        return puller.store_image(reference, digest, manifest, config_raw, progress, cancel, fetch=fetch,
                                  source="archive")
    except PullError as exc:  # what skopeo left is refused, or does not match its digests
        raise ArchiveError(f"importing {shown}: {exc}") from None
    except OSError as exc:
        raise ArchiveError(f"importing {shown}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):  # by fds, never through a symlink (the folder is the uid's)
            shutil.rmtree(box.path / out)


def _read_small(box: PullBox, name: str) -> bytes:
    """A manifest or config skopeo wrote, read by fd beneath the box, at most ``_INDEX_LIMIT`` bytes."""
    fd = box.open_file(name)
    try:
        if os.fstat(fd).st_size > _INDEX_LIMIT:
            raise ArchiveError(f"{name} is larger than {_INDEX_LIMIT} bytes (refused)")
        with open(fd, "rb", closefd=False) as handle:
            return handle.read(_INDEX_LIMIT + 1)
    finally:
        os.close(fd)
