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

Per-layer progress goes to ``progress`` (``sandpit images pull`` prints it; a job's log holds it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
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
from worker.sandbox.registry.pulled import LayerRef, PulledImage, PulledImages
from worker.sandbox.registry.skopeo import PullError, Skopeo
from worker.sandbox.registry.unpack import LayerError, UnpackedLayer, unpack_layer

__all__ = ["LayerCaps", "Puller", "RegistryConfig", "probe_shell"]

Progress = Callable[[str], None]
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
        self.skopeo = Skopeo(store.root / ".skopeo", auth_file=config.auth_file,
                             registries_conf=config.registries_conf)

    # -- registry ----------------------------------------------------------------------------
    def pull(self, ref: ImageReference, progress: Progress, cancel: threading.Event | None = None) -> PulledImage:
        """Pull canonical ``ref`` from its registry (or its mirror) into the store."""
        started = time.monotonic()
        source = f"docker://{ref}"
        raw = self.skopeo.inspect(source)
        digest = mf.sha256_digest(raw)
        if ref.digest is not None and digest != ref.digest:
            raise PullError(f"the registry sent a manifest for {ref} whose bytes hash to {digest} (refused)")
        if mf.media_type(raw) in mf.INDEXES:
            entry = mf.choose_platform(raw)
            raw = self.skopeo.inspect(f"docker://{repository(ref)}@{entry.digest}")
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
                return have
            config_raw = self.skopeo.inspect(pinned, config=True)
            image = self.store_image(str(ref), digest, manifest, config_raw, progress, cancel,
                                      fetch=lambda missing, report: self._download(pinned, manifest, missing,
                                                                                    report, cancel))
        progress(f"pulled {ref} ({short(digest)}) in {time.monotonic() - started:.1f} s")
        return image

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
                  report: Callable[[int, mf.Descriptor, str], Future[object]],
                  cancel: threading.Event | None) -> list[Future[object]]:
        """``skopeo copy`` into a temporary OCI layout whose shared blob directory already holds an
        empty file for every blob sandpit has; each missing blob is handed to ``report`` as it lands."""
        tmp = Path(tempfile.mkdtemp(prefix=".pull-", dir=self.store.root))
        futures: list[Future[object]] = []
        try:
            blobs = tmp / "blobs" / "sha256"
            blobs.mkdir(parents=True)
            wanted = {d.digest for _i, d, _k in missing}
            for layer in (manifest.config, *manifest.layers):
                if layer.digest not in wanted:
                    (blobs / layer.digest[7:]).touch()  # present: skopeo does not fetch it
            expected = sum(d.size for _i, d, _k in missing)
            pending = {d.digest: (i, d, k) for i, d, k in missing}
            last = [time.monotonic(), 0]

            def poll() -> None:
                for future in futures:  # a layer refused while the others download stops the copy
                    failed = future.exception() if future.done() else None
                    if failed is not None:
                        raise failed
                for digest_, (i, d, _k) in list(pending.items()):
                    path = blobs / digest_[7:]
                    with contextlib.suppress(FileNotFoundError):
                        if os.lstat(path).st_size == d.size:
                            del pending[digest_]
                            futures.append(report(i, d, str(path)))
                landed = sum(d.size for d in manifest.layers if d.digest in wanted and d.digest not in pending)
                partial = 0
                with contextlib.suppress(FileNotFoundError):
                    for entry in os.scandir(tmp / "layout"):
                        if entry.name.startswith("oci-put-blob"):
                            with contextlib.suppress(FileNotFoundError):
                                partial += entry.stat(follow_symlinks=False).st_size
                if landed + partial > expected + (1 << 20) + expected // 10:
                    raise PullError(f"the registry sent more than the {expected} bytes the manifest names (refused)")
                now = time.monotonic()
                if now - last[0] >= _REPORT_EVERY_S and landed + partial != last[1]:
                    last[0], last[1] = now, landed + partial
                    report(-1, manifest.config, f"downloaded {_mb(landed + partial)} of {_mb(expected)}")

            self.skopeo.copy(source, f"oci:{tmp / 'layout'}",
                             ("--preserve-digests", "--dest-shared-blob-dir", str(tmp / "blobs")),
                             poll=poll, cancel=cancel, log=tmp / "skopeo.log")
            poll()
            if pending:
                raise PullError("skopeo finished without " + ", ".join(short(d) for d in pending))
            for future in futures:
                future.result()
            return futures
        finally:
            for future in futures:  # an unpack still reading a blob keeps the directory until it is done
                with contextlib.suppress(Exception):
                    future.result()
            shutil.rmtree(tmp, ignore_errors=True)

    # -- shared by pull and import ---------------------------------------------------------
    def store_image(self, reference: str, digest: str, manifest: mf.Manifest, config_raw: bytes,
                     progress: Progress, cancel: threading.Event | None,
                     fetch: Callable[[list[tuple[int, mf.Descriptor, str]],
                                      Callable[[int, mf.Descriptor, str], Future[object]]], object],
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
                def landed(i: int, desc: mf.Descriptor, path: str) -> Future[object]:
                    if i < 0:
                        progress(f"  {path}")  # a download total
                        done: Future[object] = Future()
                        done.set_result(None)
                        return done
                    progress(f"  layer {i + 1}/{n} {short(desc.digest)} {_mb(desc.size)}: downloaded, unpacking")
                    return pool.submit(self._unpack_file, i, n, desc, config.diff_ids[i], path, progress)

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

    def _unpack_file(self, i: int, n: int, desc: mf.Descriptor, diff_id: str, path: str,
                     progress: Progress) -> None:
        started = time.monotonic()
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            layer = self.unpack_blob(fd, desc, diff_id)
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # the blob is not kept once its layer is unpacked
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
