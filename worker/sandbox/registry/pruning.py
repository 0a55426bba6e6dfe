"""Garbage collection of the image store: what no reference holds goes, and a size cap, LRU (adapter).

A *name* (``names/``, a reference such as ``docker.io/library/node:20``) holds a manifest record;
a manifest record, or a recipe's ref, holds its layers. ``prune`` removes the manifest records no
name holds, then the layers nothing holds, then temporaries a crashed pull left (older than a
day). With a cap (``SANDPIT_IMAGES_MAX_SIZE``, applied after every pull and by ``sandpit images
prune``), the least recently used names of pulled images are let go first until the layers they
hold fit; recipe images are never evicted (they are the operator's, and a rebuild is slow).

A layer in use is never removed: a job holds a shared ``flock`` on each of its layers' directories
for its whole life (``ImageStore.hold``); removal takes the exclusive lock without waiting, skips
the layer when it cannot, renames the directory out of ``layers/`` while holding the lock and only
then deletes it (``rmtree`` by fds, no symlink followed), so a job starting at that moment finds
it gone and says so rather than running on a half-deleted tree. Its idmapped views in the run dir
are unmounted too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from pipelines.files.locks import lock_fd
from pipelines.identifiers import is_sha256_hex
from pipelines.record import field, record
from worker.sandbox.beneath import NotBeneath, open_beneath
from worker.sandbox.registry.pulled import PulledImages

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
STALE_S = 24 * 3600.0
#: a layer made this recently is kept: a build or a pull renames its layer into place before it
#: writes the ref or manifest that names it, and a prune in between must not take it
GRACE_S = 600.0
_TEMPORARY = (".tmp-", ".pull-", ".import-", ".probe-", ".trash-")


@record
class PruneReport:
    names: list[str] = field(default_factory=list)  # evicted by the cap
    manifests: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # layers a running job holds
    freed_bytes: int = 0


def prune(store: PulledImages, recipe_keys: set[str], *, max_bytes: int = 0, keep: frozenset[str] = frozenset(),
          run_dir: Path | None = None, now: float | None = None, grace_s: float = GRACE_S,
          pull_dir: Path | None = None) -> PruneReport:
    """Collect what nothing holds; with ``max_bytes``, evict the least recently used names first
    (never one whose digest is in ``keep``: the image just pulled). ``pull_dir``: where pulls make
    their private directories (``.pull-*``), swept of those a dead pull left."""
    report = PruneReport()
    names = store.names()
    images = {}
    for digest in {d for _r, d, _u in names}:
        try:
            image = store.image(digest)
        except Exception:  # damaged: nothing it names is trusted, so it holds nothing
            image = None
        if image is not None:
            images[digest] = image
    if max_bytes > 0:
        sizes = {}

        def held_bytes(live: list[tuple[str, str, float]]) -> int:
            keys = {la.key for _r, d, _u in live if d in images for la in images[d].layers}
            for key in keys:
                if key not in sizes:
                    sizes[key] = store.layer_size(key)
            return sum(sizes[k] for k in keys if k not in recipe_keys)

        live = sorted(names, key=lambda n: n[2])
        while live and held_bytes(live) > max_bytes:
            victim = next((n for n in live if n[1] not in keep), None)
            if victim is None:
                break
            live.remove(victim)
            from pipelines.references import parse_reference

            store.remove_name(parse_reference(victim[0]))
            report.names.append(victim[0])
        names = live
    held = {d for _r, d, _u in names}
    for digest in store.manifest_digests():
        if digest not in held:
            store.remove_manifest(digest)
            report.manifests.append(digest)
    wanted = set(recipe_keys) | {la.key for d, image in images.items() if d in held for la in image.layers}
    try:
        layers = store.open_dir("layers")
    except (FileNotFoundError, NotBeneath):
        return report
    try:
        stamp = time.time() if now is None else now
        for entry in os.listdir(layers):
            if is_sha256_hex(entry) and entry not in wanted:
                with contextlib.suppress(OSError):
                    if stamp - os.stat(entry, dir_fd=layers, follow_symlinks=False).st_mtime < grace_s:
                        continue
                size = store.layer_size(entry)
                if remove_layer(layers, entry, run_dir):
                    report.layers.append(entry)
                    report.freed_bytes += size
                else:
                    report.busy.append(entry)
            elif entry.startswith(_TEMPORARY):
                _remove_stale(layers, entry, stamp)
        for folder, prefixes in ((store.root, _TEMPORARY), (pull_dir, (".pull-",))):
            if folder is None:
                continue
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(folder, _DIR)
                try:
                    for entry in os.listdir(fd):
                        if entry.startswith(prefixes):
                            _remove_stale(fd, entry, stamp)
                finally:
                    os.close(fd)
    finally:
        os.close(layers)
    return report


def remove_layer(layers_fd: int, key: str, run_dir: Path | None) -> bool:
    """Remove ``layers/<key>`` unless a job holds it (False then)."""
    try:
        fd = open_beneath(layers_fd, key, _DIR)
    except FileNotFoundError:
        return True
    except (OSError, NotBeneath):
        return False
    try:
        if not lock_fd(fd, blocking=False):
            return False
        trash = f".trash-{key}-{os.urandom(4).hex()}"
        os.rename(key, trash, src_dir_fd=layers_fd, dst_dir_fd=layers_fd)
        shutil.rmtree(trash, dir_fd=layers_fd, ignore_errors=True)
    finally:
        os.close(fd)
    if run_dir is not None:
        from worker.sandbox.rootfs import drop_layer_views

        drop_layer_views(run_dir, key)
    return True


def _remove_stale(dir_fd: int, name: str, now: float) -> None:
    """A temporary of a pull or build that died (older than a day: a live one is far younger)."""
    with contextlib.suppress(OSError):
        if now - os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime > STALE_S:
            shutil.rmtree(name, dir_fd=dir_fd, ignore_errors=True)
