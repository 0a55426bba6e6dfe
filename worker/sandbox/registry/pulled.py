"""The pulled part of the image store: names, manifests and unpacked layers on disk (adapter).

Layout under ``<state>/images`` (beside the recipes' ``refs/``; ``layers/`` is shared with them)::

    names/<sha256 of the canonical reference>.json   {"reference", "digest"}; its mtime is the last use
    manifests/<hex of the manifest digest>.json        what a job of the image needs (layers, env, shell, ...)
    layers/<hex of the layer's diff_id>/rootfs         one unpacked layer, read-only, shared by digest
    layers/<hex>/meta.json                            its digests and size
    locks/pull-<hex>.lock                              one pull of a manifest at a time

No character of a reference reaches a path (names are keyed by a hash of it); a key read back
from a record must be 64 hex before it names anything, and every record is opened beneath the
store's fd without following a symlink (``open_beneath``). A record that fails its grammar is
"damaged": the image is pulled again where the policy allows, never trusted. Writes go through a
unique temporary and a rename, and a layer is renamed into ``layers/`` only once both its digests
matched (house rule 16).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from pathlib import Path

from pipelines.files.temps import write_atomic
from pipelines.identifiers import is_digest, is_sha256_hex
from pipelines.record import record
from pipelines.references import ImageReference
from worker import TYPE_CHECKING
from worker.errors import ImageError
from worker.sandbox.beneath import NotBeneath, open_beneath
from worker.sandbox.registry.manifests import ImageConfig
from worker.sandbox.registry.naming import name_key

if TYPE_CHECKING:
    from typing import Any

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_SHELLS = ("/bin/sh", "/usr/local/bin/bash", "/usr/bin/bash", "/bin/bash")
_ENV_NAME_FIRST = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"


@record(frozen=True)
class LayerRef:
    key: str  # hex of the diff_id: the layer's directory
    digest: str  # the compressed blob's digest, as the manifest names it
    size: int  # bytes of the compressed blob


@record(frozen=True)
class PulledImage:
    digest: str
    reference: str
    layers: tuple[LayerRef, ...]
    config: ImageConfig
    shell: str
    size: int  # unpacked bytes, all layers
    pulled_at: float
    source: str = "registry"

    def as_json(self) -> dict[str, Any]:
        c = self.config
        return {"digest": self.digest, "reference": self.reference, "source": self.source,
                "layers": [[la.key, la.digest, la.size] for la in self.layers], "shell": self.shell,
                "size": self.size, "pulled_at": self.pulled_at, "diff_ids": list(c.diff_ids),
                "env": [list(e) for e in c.env], "entrypoint": list(c.entrypoint), "cmd": list(c.cmd),
                "workdir": c.workdir, "user": c.user, "ports": list(c.ports), "platform": c.platform}


def _strings(value: object) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(v, str) and "\0" not in v for v in value):
        return tuple(value)
    return None


def image_from_json(digest: str, text: bytes) -> PulledImage:
    """A manifest record read back, every field checked (keys become paths, env and shell reach
    the job), or ImageError "damaged"."""
    why = None
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        data, why = None, "not JSON"
    if why is None and not isinstance(data, dict):
        why = "not an object"
    if why is None:
        assert isinstance(data, dict)
        layers = data.get("layers")
        env = data.get("env")
        lists = {k: _strings(data.get(k)) for k in ("entrypoint", "cmd", "ports", "diff_ids")}
        if data.get("digest") != digest:
            why = "it names another digest"
        elif not isinstance(layers, list) or not all(
                isinstance(la, list) and len(la) == 3 and is_sha256_hex(la[0]) and is_digest(la[1])
                and isinstance(la[2], int) and not isinstance(la[2], bool) for la in layers):
            why = "its layers are not [key, digest, size] entries"
        elif not isinstance(env, list) or not all(
                isinstance(e, list) and len(e) == 2 and all(isinstance(v, str) and "\0" not in v for v in e)
                and e[0] and e[0][0] in _ENV_NAME_FIRST and "=" not in e[0] for e in env):
            why = "its env is not a list of [NAME, value] pairs"
        elif data.get("shell") not in _SHELLS:
            why = "its shell is not one sandpit looks for"
        elif any(v is None for v in lists.values()) or not all(
                isinstance(data.get(k), str) for k in ("reference", "workdir", "user", "platform", "source")):
            why = "a field has the wrong type"
        elif not isinstance(data.get("size"), int) or not isinstance(data.get("pulled_at"), (int, float)):
            why = "its size or time is not a number"
    if why is not None:
        raise ImageError(f"the stored image {digest} is damaged ({why}); pull it again")
    assert isinstance(data, dict)
    config = ImageConfig(diff_ids=lists["diff_ids"] or (), env=tuple((e[0], e[1]) for e in data["env"]),
                         entrypoint=lists["entrypoint"] or (), cmd=lists["cmd"] or (), workdir=data["workdir"],
                         user=data["user"], ports=lists["ports"] or (), platform=data["platform"])
    return PulledImage(digest=digest, reference=data["reference"], config=config, shell=data["shell"],
                       layers=tuple(LayerRef(la[0], la[1], la[2]) for la in data["layers"]), size=data["size"],
                       pulled_at=float(data["pulled_at"]), source=data["source"])


class PulledImages:
    """Names, manifest records and layers of pulled and imported images under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # -- directories ------------------------------------------------------------------------
    def open_dir(self, sub: str, create: bool = False) -> int:
        if create:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        root = os.open(self.root, _DIR)
        try:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(sub, 0o755 if sub == "layers" else 0o700, dir_fd=root)
            return open_beneath(root, sub, _DIR)
        finally:
            os.close(root)

    def _read(self, sub: str, name: str, limit: int = 4 << 20) -> bytes | None:
        try:
            dir_fd = self.open_dir(sub)
        except FileNotFoundError:
            return None
        try:
            fd = open_beneath(dir_fd, name, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        finally:
            os.close(dir_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
                raise NotBeneath(f"{sub}/{name} is not a regular file of at most {limit} bytes")
            return os.read(fd, st.st_size + 1)
        finally:
            os.close(fd)

    def write(self, sub: str, name: str, data: bytes) -> None:
        dir_fd = self.open_dir(sub, create=True)
        try:
            write_atomic(dir_fd, name, data)
        finally:
            os.close(dir_fd)

    # -- names ------------------------------------------------------------------------------
    def name(self, ref: ImageReference) -> str | None:
        """The manifest digest ``ref`` (canonical) points at here, or None."""
        text = self._read("names", f"{name_key(ref)}.json")
        if text is None:
            return None
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(data, dict) or data.get("reference") != str(ref) or not is_digest(data.get("digest")):
            return None  # damaged or a hash collision: as good as absent
        return str(data["digest"])

    def set_name(self, ref: ImageReference, digest: str) -> None:
        self.write("names", f"{name_key(ref)}.json",
                   json.dumps({"reference": str(ref), "digest": digest}).encode())

    def touch(self, ref: ImageReference) -> None:
        """Mark the name used now (its file's mtime: one utimensat, no rewrite)."""
        with contextlib.suppress(OSError):
            dir_fd = self.open_dir("names")
            try:
                os.utime(f"{name_key(ref)}.json", dir_fd=dir_fd, follow_symlinks=False)
            finally:
                os.close(dir_fd)

    def remove_name(self, ref: ImageReference) -> bool:
        try:
            dir_fd = self.open_dir("names")
        except FileNotFoundError:
            return False
        try:
            os.unlink(f"{name_key(ref)}.json", dir_fd=dir_fd)
            return True
        except FileNotFoundError:
            return False
        finally:
            os.close(dir_fd)

    def names(self) -> list[tuple[str, str, float]]:
        """(reference, digest, last use) of every name."""
        try:
            dir_fd = self.open_dir("names")
        except (FileNotFoundError, NotBeneath):
            return []
        out = []
        try:
            for entry in os.listdir(dir_fd):
                if not (entry.endswith(".json") and is_sha256_hex(entry[:-5])):
                    continue
                text = self._read("names", entry)
                try:
                    data = json.loads(text or b"")
                    used = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False).st_mtime
                except (ValueError, UnicodeDecodeError, OSError):
                    continue
                if isinstance(data, dict) and isinstance(data.get("reference"), str) and is_digest(data.get("digest")):
                    out.append((data["reference"], data["digest"], used))
        finally:
            os.close(dir_fd)
        return sorted(out)

    # -- manifests ---------------------------------------------------------------------------
    def image(self, digest: str) -> PulledImage | None:
        """The stored image of manifest ``digest`` with every layer present, else None; ImageError
        when its record is damaged."""
        if not is_digest(digest):
            return None
        text = self._read("manifests", f"{digest[7:]}.json")
        if text is None:
            return None
        image = image_from_json(digest, text)
        if not all(self.layer_present(la.key) for la in image.layers):
            return None
        return image

    def save_image(self, image: PulledImage) -> None:
        self.write("manifests", f"{image.digest[7:]}.json", json.dumps(image.as_json()).encode())

    def manifest_digests(self) -> list[str]:
        try:
            dir_fd = self.open_dir("manifests")
        except (FileNotFoundError, NotBeneath):
            return []
        try:
            return sorted("sha256:" + e[:-5] for e in os.listdir(dir_fd)
                          if e.endswith(".json") and is_sha256_hex(e[:-5]))
        finally:
            os.close(dir_fd)

    def remove_manifest(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            dir_fd = self.open_dir("manifests")
            try:
                os.unlink(f"{digest[7:]}.json", dir_fd=dir_fd)
            finally:
                os.close(dir_fd)

    # -- layers ------------------------------------------------------------------------------
    def layer_present(self, key: str) -> bool:
        if not is_sha256_hex(key):
            return False
        try:
            dir_fd = self.open_dir("layers")
        except (FileNotFoundError, NotBeneath):
            return False
        try:
            os.close(open_beneath(dir_fd, f"{key}/meta.json", os.O_PATH))
            os.close(open_beneath(dir_fd, f"{key}/rootfs", os.O_PATH | os.O_DIRECTORY))
            return True
        except (OSError, NotBeneath):
            return False
        finally:
            os.close(dir_fd)

    def layer_rootfs(self, key: str) -> Path:
        assert is_sha256_hex(key)
        return self.root / "layers" / key / "rootfs"

    def layer_size(self, key: str) -> int:
        text = self._read("layers", f"{key}/meta.json") if is_sha256_hex(key) else None
        try:
            size = json.loads(text or b"").get("size", 0)
        except (ValueError, UnicodeDecodeError, AttributeError):
            return 0
        return size if isinstance(size, int) else 0


def now() -> float:
    return time.time()
