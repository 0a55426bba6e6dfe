"""Getting an image into the store: from a registry (pull) or a ``docker save``/OCI archive (import).

A pull, step by step (every byte checked before it is used):

1. ``skopeo inspect --raw`` fetches the manifest; its sha256 is its digest (checked against the
   reference's digest when it names one). An index gives the manifest of this host's platform,
   fetched by digest and checked the same way.
2. One pull per manifest at a time (an flock): a second pull of the same image waits, then finds
   it stored, so concurrent pulls share one download.
3. The config is fetched and checked against the manifest's config digest; its ``diff_ids`` name
   the layers, and a layer sandpit already holds (by diff_id, whichever image brought it) is not
   fetched again: it is an empty placeholder in skopeo's shared blob directory.
4. ``skopeo copy`` downloads the missing blobs (in parallel); each one that lands is unpacked on
   another thread while the others download, into a fresh temporary directory renamed into
   ``layers/`` once its digest and diff_id matched (:mod:`worker.sandbox.registry.unpack`).
5. The shell a job would use is found once (on a read-only overlay of the layers), and the
   manifest record and the name are written.

Every skopeo of a pull runs as an unprivileged uid in a directory of its own (:mod:`.pull_box`);
what it wrote is read by fd beneath that directory, never by a path it could have redirected.

Per-layer progress goes to ``progress`` (``sandpit images pull`` prints it; a job's log holds it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from pipelines.files.locks import FileLock, try_hold
from pipelines.files.temps import write_atomic
from pipelines.references import ImageReference
from worker.errors import ImageError
from worker.sandbox.registry import manifests as mf
from worker.sandbox.registry.config import LayerCaps, RegistryConfig
from worker.sandbox.registry.naming import repository
from worker.sandbox.registry.pull_box import PullBox
from worker.sandbox.registry.pulled import LayerRef, PulledImage, PulledImages
from worker.sandbox.registry.skopeo import PullError, Skopeo
from worker.sandbox.registry.unpack import LayerError, UnpackedLayer, unpack_layer

__all__ = ["LayerCaps", "Puller", "RegistryConfig", "probe_shell"]

Progress = Callable[[str], None]
#: a blob that landed, (layer index, descriptor, its open fd, a callable removing its file): the
#: unpack that it starts, on the pool
Landed = Callable[[int, mf.Descriptor, int, Callable[[], None]], Future[object]]
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_REPORT_EVERY_S = 1.0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def short(digest: str) -> str:
    return digest[:19]


class Puller:
    def __init__(self, store: PulledImages, config: RegistryConfig) -> None:
        self.store = store
        self.config = config
        self.skopeo = Skopeo(auth_file=config.auth_file,
                             registries_conf=config.registries_conf)

    # -- registry ----------------------------------------------------------------------------
    def pull(self, ref: ImageReference, progress: Progress, cancel: threading.Event | None = None) -> PulledImage:
        """Pull canonical ``ref`` from its registry (or its mirror) into the store; skopeo runs as an
        unprivileged uid in a directory of its own for the whole pull (:mod:`.pull_box`)."""
        started = time.monotonic()
        with self.box() as box:
            image, fetched = self._pull(ref, box, progress, cancel)
        if fetched:
            progress(f"pulled {ref} ({short(image.digest)}) in {time.monotonic() - started:.1f} s")
        return image

    def box(self, *, registry: bool = True) -> PullBox:
        """A box for skopeo (:mod:`.pull_box`); ``registry=False`` (an import): without the registry
        configuration and the credentials, which an archive needs neither of."""
        cfg = self.config
        return PullBox(cfg.pull_dir or self.store.root.parent, uid_base=cfg.uid_base, uid_slots=cfg.uid_slots,
                       run_dir=cfg.run_dir, registries_conf=self.skopeo.registries_conf_bytes() if registry else None,
                       auth_file=cfg.auth_file if registry else None)

    def _pull(self, ref: ImageReference, box: PullBox, progress: Progress,
              cancel: threading.Event | None) -> tuple[PulledImage, bool]:
        """The image, and whether it was fetched (False: another pull had stored it meanwhile)."""
        source = f"docker://{ref}"
        raw = self.skopeo.inspect(source, box=box)
        digest = mf.sha256_digest(raw)
        if ref.digest is not None and digest != ref.digest:
            raise PullError(f"the registry sent a manifest for {ref} whose bytes hash to {digest} (refused)")
        if mf.media_type(raw) in mf.INDEXES:
            entry = mf.choose_platform(raw)
            raw = self.skopeo.inspect(f"docker://{repository(ref)}@{entry.digest}", box=box)
            if mf.sha256_digest(raw) != entry.digest:
                raise PullError(f"the registry sent a manifest for {ref} that does not match its digest "
                                f"{entry.digest} (refused)")
            digest = entry.digest
        manifest = mf.parse_manifest(raw)
        pinned = f"docker://{repository(ref)}@{digest}"
        with self._pull_lock(digest, progress, cancel):
            have = self._stored(digest)
            if have is not None:
                progress(f"{ref}: {short(digest)} is already in the store")
                return have, False
            config_raw = self.skopeo.inspect(pinned, config=True, box=box)
            return self.store_image(str(ref), digest, manifest, config_raw, progress, cancel,
                                    fetch=lambda missing, landed: self._download(
                                        pinned, manifest, missing, landed, box, progress, cancel)), True

    def _stored(self, digest: str) -> PulledImage | None:
        try:
            return self.store.image(digest)
        except ImageError:
            return None  # damaged: pulled again over it

    @contextlib.contextmanager
    def _pull_lock(self, digest: str, progress: Progress, cancel: threading.Event | None) -> Iterator[FileLock]:
        locks = self.store.open_dir("locks", create=True)
        try:
            name = f"pull-{digest[7:]}.lock"
            lock = try_hold(name, dir_fd=locks)
            if lock is None:
                progress(f"waiting for another pull of {short(digest)} (one download for both)")
                while lock is None:
                    if cancel is not None and cancel.is_set():
                        raise PullError("the pull was cancelled")
                    time.sleep(0.1)
                    lock = try_hold(name, dir_fd=locks)
        finally:
            os.close(locks)
        with lock:
            yield lock

    def _download(self, source: str, manifest: mf.Manifest, missing: list[tuple[int, mf.Descriptor, str]],
                  landed: Landed, box: PullBox, progress: Progress, cancel: threading.Event | None) -> None:
        """``skopeo copy`` into an OCI layout in the pull's box whose shared blob directory already
        holds an empty file for every blob sandpit has; each missing blob is handed to ``landed`` as
        it lands, opened beneath the box's directory with no symlink on the way (the box is the
        skopeo uid's: nothing in it is trusted)."""
        from worker.sandbox.beneath import NotBeneath, open_beneath

        futures: list[Future[object]] = []
        blobs = box.open_dir("blobs/sha256")
        try:
            wanted = {d.digest for _i, d, _k in missing}
            for layer in (manifest.config, *manifest.layers):
                if layer.digest not in wanted:  # present: skopeo does not fetch it
                    with contextlib.suppress(FileExistsError):
                        os.close(os.open(layer.digest[7:], _NEW_FILE, 0o644, dir_fd=blobs))
            expected = sum(d.size for _i, d, _k in missing)
            pending = {d.digest: (i, d, k) for i, d, k in missing}
            last = [time.monotonic(), 0]

            def remover(name: str) -> Callable[[], None]:
                def remove() -> None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=blobs)  # the blob is not kept once its layer is unpacked
                return remove

            def poll() -> None:
                for future in futures:  # a layer refused while the others download stops the copy
                    failed = future.exception() if future.done() else None
                    if failed is not None:
                        raise failed
                for digest_, (i, d, _k) in list(pending.items()):
                    try:
                        if os.stat(digest_[7:], dir_fd=blobs, follow_symlinks=False).st_size != d.size:
                            continue  # not there yet (skopeo renames a whole blob into place)
                        fd = open_beneath(blobs, digest_[7:], os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
                    except (FileNotFoundError, NotBeneath):
                        continue
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        os.close(fd)
                        raise PullError(f"skopeo left something other than a file for {short(digest_)} (refused)")
                    del pending[digest_]
                    futures.append(landed(i, d, fd, remover(digest_[7:])))
                got = sum(d.size for d in manifest.layers if d.digest in wanted and d.digest not in pending)
                partial = _partial_bytes(box)
                if got + partial > expected + (1 << 20) + expected // 10:
                    raise PullError(f"the registry sent more than the {expected} bytes the manifest names (refused)")
                now = time.monotonic()
                if now - last[0] >= _REPORT_EVERY_S and got + partial != last[1]:
                    last[0], last[1] = now, got + partial
                    progress(f"  downloaded {_mb(got + partial)} of {_mb(expected)}")

            assert box.path is not None
            self.skopeo.copy(source, f"oci:{box.path / 'layout'}",
                             ("--preserve-digests", "--dest-shared-blob-dir", str(box.path / "blobs")),
                             poll=poll, cancel=cancel, box=box)
            poll()
            if pending:
                raise PullError("skopeo finished without " + ", ".join(short(d) for d in pending))
            for future in futures:
                future.result()
        finally:
            for future in futures:  # an unpack still reading a blob keeps the directory until it is done
                with contextlib.suppress(Exception):
                    future.result()
            os.close(blobs)

    # -- shared by pull and import ---------------------------------------------------------
    def store_image(self, reference: str, digest: str, manifest: mf.Manifest, config_raw: bytes,
                     progress: Progress, cancel: threading.Event | None,
                     fetch: Callable[[list[tuple[int, mf.Descriptor, str]], Landed], object],
                     source: str = "registry") -> PulledImage:
        if mf.sha256_digest(config_raw) != manifest.config.digest:
            raise PullError(f"the config of {reference} does not match its digest {manifest.config.digest} (refused)")
        config, dropped = mf.parse_config(config_raw)
        if len(config.diff_ids) != len(manifest.layers):
            raise mf.ManifestError(f"the image has {len(manifest.layers)} layers but its config names "
                                   f"{len(config.diff_ids)} diff_ids")
        n = len(manifest.layers)
        total = sum(d.size for d in manifest.layers)
        progress(f"{reference}: {short(digest)}, {n} layer{'s' * (n != 1)}, {_mb(total)}")
        if dropped:
            progress(f"  env entries left out (not NAME=value): {', '.join(dropped)[:200]}")
        missing = []
        for i, (desc, diff_id) in enumerate(zip(manifest.layers, config.diff_ids, strict=True)):
            if desc.size > self.config.caps.max_bytes:
                raise LayerError(f"layer {i + 1} of {reference} is {desc.size} bytes, over the "
                                 f"{self.config.caps.max_bytes}-byte cap (refused)")
            if self.store.layer_present(diff_id[7:]):
                progress(f"  layer {i + 1}/{n} {short(desc.digest)} {_mb(desc.size)}: already here")
            else:
                missing.append((i, desc, diff_id[7:]))
        if missing:
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="sandpit-unpack") as pool:
                def landed(i: int, desc: mf.Descriptor, fd: int, remove: Callable[[], None]) -> Future[object]:
                    progress(f"  layer {i + 1}/{n} {short(desc.digest)} {_mb(desc.size)}: downloaded, unpacking")
                    return pool.submit(self._unpack_file, i, n, desc, config.diff_ids[i], fd, remove, progress)

                for i, desc, _key in missing:
                    progress(f"  layer {i + 1}/{n} {short(desc.digest)} {_mb(desc.size)}: fetching")
                fetch(missing, landed)
        layers = tuple(LayerRef(d[7:], m.digest, m.size) for d, m in zip(config.diff_ids, manifest.layers,
                                                                            strict=True))
        shell = probe_shell([self.store.layer_rootfs(la.key) for la in layers], self.store.root)
        image = PulledImage(digest=digest, reference=reference, layers=layers, config=config, shell=shell,
                            size=sum(self.store.layer_size(la.key) for la in layers), pulled_at=time.time(),
                            source=source)
        self.store.save_image(image)
        return image

    def _unpack_file(self, i: int, n: int, desc: mf.Descriptor, diff_id: str, fd: int, remove: Callable[[], None],
                     progress: Progress) -> None:
        """Unpack the blob open at ``fd`` (closed here), then ``remove`` its file."""
        started = time.monotonic()
        try:
            layer = self.unpack_blob(fd, desc, diff_id)
        finally:
            os.close(fd)
            remove()
        if layer is not None:
            progress(f"  layer {i + 1}/{n} {short(desc.digest)}: unpacked {layer.members} entries, "
                     f"{_mb(layer.size)} in {time.monotonic() - started:.1f} s"
                     + "".join(f"; {note}" for note in layer.notes))

    def unpack_blob(self, fd: int, desc: mf.Descriptor, diff_id: str) -> UnpackedLayer | None:
        """Unpack one blob into ``layers/<diff_id hex>`` (a fresh temporary renamed into place once
        both digests matched); None when another pull made the layer meanwhile."""
        import json

        key = diff_id[7:]
        if os.fstat(fd).st_size != desc.size:
            raise LayerError(f"layer {desc.digest} is {os.fstat(fd).st_size} bytes, not the {desc.size} its "
                             "manifest names (refused)")
        layers = self.store.open_dir("layers", create=True)
        tmp_name = f".tmp-{key}-{os.urandom(6).hex()}"
        try:
            os.mkdir(tmp_name, 0o755, dir_fd=layers)
            os.chmod(tmp_name, 0o755, dir_fd=layers)  # noqa: S103 - the runtimes read layers (as recipe layers)
            tmp = os.open(tmp_name, _DIR | os.O_NOFOLLOW, dir_fd=layers)
            try:
                os.mkdir("rootfs", 0o755, dir_fd=tmp)
                os.chmod("rootfs", 0o755, dir_fd=tmp)  # noqa: S103 - the layer root, as Docker's
                rootfs = os.open("rootfs", _DIR | os.O_NOFOLLOW, dir_fd=tmp)
                try:
                    layer = unpack_layer(fd, rootfs, digest=desc.digest, diff_id=diff_id, caps=self.config.caps)
                finally:
                    os.close(rootfs)
                write_atomic(tmp, "meta.json", json.dumps(
                    {"diff_id": diff_id, "digest": desc.digest, "size": layer.size, "members": layer.members,
                     "unpacked_at": time.time()}).encode())
            finally:
                os.close(tmp)
            try:
                os.rename(tmp_name, key, src_dir_fd=layers, dst_dir_fd=layers)
            except OSError as exc:
                import errno

                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                return None  # the same layer, unpacked by another pull meanwhile
            return layer
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(tmp_name, dir_fd=layers)
            os.close(layers)


def _partial_bytes(box: PullBox) -> int:
    """Bytes of the blobs skopeo is still writing (``oci-put-blob*`` in its layout), for progress."""
    total = 0
    try:
        layout = box.open_dir("layout")
    except (OSError, ValueError):
        return 0  # not made yet (or not a plain directory: then nothing to count)
    try:
        for entry in os.scandir(layout):
            if entry.name.startswith("oci-put-blob"):
                with contextlib.suppress(FileNotFoundError):
                    total += entry.stat(follow_symlinks=False).st_size
    finally:
        os.close(layout)
    return total


def probe_shell(layers: list[Path], scratch: Path) -> str:
    """The shell GitLab Runner would pick in the merged image (``worker.sandbox.shell``): looked up
    in a read-only overlay of the layers, mounted for the lookup only (symlinks such as
    ``/bin -> usr/bin`` in one layer and bash in another resolve as in the job)."""
    from worker.sandbox.shell import detect_shell

    if len(layers) == 1:
        return detect_shell(layers[0])
    from worker.sandbox.mounts import mount, umount
    from worker.sandbox.rootfs import overlay_path

    point = Path(tempfile.mkdtemp(prefix=".probe-", dir=scratch))
    try:
        lower = ":".join(overlay_path(str(p)) for p in reversed(layers))
        mount("overlay", str(point), "overlay", _MS_RDONLY | _MS_NODEV | _MS_NOSUID, f"lowerdir={lower}")
        try:
            return detect_shell(point)
        finally:
            umount(str(point))
    except OSError as exc:
        raise ImageError(f"cannot look into the image's layers: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            point.rmdir()


_MS_RDONLY, _MS_NOSUID, _MS_NODEV = 0x1, 0x2, 0x4
