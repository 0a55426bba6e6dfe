"""Image recipes (``images/NAME/image.toml``) and the content-addressed image store.

Layout under ``<state>/images``::

    layers/<key>/rootfs     the unpacked tree, owned by host root, never written after build
    layers/<key>/meta.json  recipe, env, size
    refs/<name>.json        which key the name currently points at

``key`` is the sha256 of the canonical recipe, so an unchanged recipe is never rebuilt.
Builds of one image are serialised by an flock; a build goes to a temporary directory and is
renamed into place, so a crash never leaves a half image under a key.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from worker.errors import ImageError
from worker.record import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

BUILDER_VERSION = 1  # bump when the way recipes are built changes
_RECIPE_KEYS = {"suite", "variant", "packages", "env", "customize", "mirror"}


@record(frozen=True)
class Recipe:
    name: str
    suite: str
    variant: str = "minbase"
    packages: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    customize: tuple[str, ...] = ()
    mirror: str | None = None

    def key(self) -> str:
        canon = json.dumps(
            {"builder": BUILDER_VERSION, "suite": self.suite, "variant": self.variant,
             "packages": sorted(self.packages), "env": sorted(self.env),
             "customize": list(self.customize), "mirror": self.mirror},
            sort_keys=True,
        )
        import hashlib

        return hashlib.sha256(canon.encode()).hexdigest()


@record(frozen=True)
class Image:
    name: str
    key: str
    rootfs: Path
    env: tuple[tuple[str, str], ...]
    size: int
    built_at: float


def parse_recipe(name: str, text: str) -> Recipe:
    """A recipe from its TOML text; every problem is reported at once."""
    import tomllib

    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ImageError(f"images/{name}/image.toml: {exc}") from exc
    problems = [f"unknown key {k!r}" for k in data if k not in _RECIPE_KEYS]
    if not isinstance(data.get("suite"), str):
        problems.append("'suite' (e.g. \"bookworm\") is required")
    for list_key in ("packages", "customize"):
        value = data.get(list_key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{list_key!r} must be a list of strings")
    env = data.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        problems.append("'env' must be a table of strings")
    if problems:
        raise ImageError(f"images/{name}/image.toml: " + "; ".join(problems))
    return Recipe(
        name=name, suite=data["suite"], variant=data.get("variant", "minbase"),
        packages=tuple(data.get("packages", [])), env=tuple(sorted(env.items())),
        customize=tuple(data.get("customize", [])), mirror=data.get("mirror"),
    )


class ImageStore:
    def __init__(self, state_dir: Path, recipes_dir: Path) -> None:
        self.root = state_dir / "images"
        self.recipes_dir = recipes_dir

    # -- recipes -------------------------------------------------------------------------
    def recipe_names(self) -> list[str]:
        if not self.recipes_dir.is_dir():
            return []
        return sorted(p.parent.name for p in self.recipes_dir.glob("*/image.toml"))

    def recipe(self, name: str) -> Recipe:
        path = self.recipes_dir / name / "image.toml"
        if "/" in name or name.startswith(".") or not path.is_file():
            known = ", ".join(self.recipe_names()) or "none"
            raise ImageError(f"no image recipe named {name!r} (known: {known})")
        return parse_recipe(name, path.read_text())

    # -- store ---------------------------------------------------------------------------
    def _ref_path(self, name: str) -> Path:
        return self.root / "refs" / f"{name}.json"

    def get(self, name: str) -> Image:
        """The built image, or ImageError saying how to build it."""
        try:
            ref = json.loads(self._ref_path(name).read_text())
        except FileNotFoundError:
            if name not in self.recipe_names():
                known = ", ".join(self.recipe_names()) or "none"
                raise ImageError(f"there is no image named {name!r} (images: {known}; recipes live in "
                                 f"{self.recipes_dir})") from None
            raise ImageError(
                f"image {name!r} is not built; build it with: sandpit images build {name}"
            ) from None
        rootfs = self.root / "layers" / ref["key"] / "rootfs"
        if not rootfs.is_dir():
            raise ImageError(f"image {name!r} is damaged; rebuild it with: sandpit images build {name}")
        return Image(name=name, key=ref["key"], rootfs=rootfs, env=tuple(tuple(e) for e in ref["env"]),
                     size=ref.get("size", 0), built_at=ref.get("built_at", 0.0))

    def list(self) -> list[Image]:
        images = []
        for ref in sorted((self.root / "refs").glob("*.json")):
            try:
                images.append(self.get(ref.stem))
            except ImageError:
                continue
        return images

    def is_current(self, name: str) -> bool:
        try:
            return self.get(name).key == self.recipe(name).key()
        except ImageError:
            return False

    def build(self, name: str, progress: Callable[[str], None] = lambda _m: None) -> tuple[Image, bool]:
        """Build ``name`` unless its recipe's key is already in the store. Returns (image, built)."""
        recipe = self.recipe(name)
        key = recipe.key()
        (self.root / "layers").mkdir(parents=True, exist_ok=True)
        (self.root / "refs").mkdir(parents=True, exist_ok=True)
        lock_path = self.root / f".build-{name}.lock"
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            layer = self.root / "layers" / key
            built = False
            if not (layer / "meta.json").is_file():
                self._mmdebstrap(recipe, layer, progress)
                built = True
            meta = json.loads((layer / "meta.json").read_text())
            ref = {"name": name, "key": key, "env": meta["env"], "size": meta["size"],
                   "built_at": meta["built_at"]}
            tmp = self._ref_path(name).with_suffix(".tmp")
            tmp.write_text(json.dumps(ref))
            os.replace(tmp, self._ref_path(name))
        return self.get(name), built

    def remove(self, name: str) -> None:
        import shutil

        image = self.get(name)
        self._ref_path(name).unlink()
        still_used = {img.key for img in self.list()}
        if image.key not in still_used:
            shutil.rmtree(self.root / "layers" / image.key, ignore_errors=True)

    def _mmdebstrap(self, recipe: Recipe, layer: Path, progress: Callable[[str], None]) -> None:
        import shutil

        tmp = layer.with_name(f".tmp-{layer.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        cmd = ["mmdebstrap", f"--variant={recipe.variant}", "--mode=root", "--quiet",
               "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
               "--dpkgopt=path-include=/usr/share/doc/*/copyright"]
        if recipe.packages:
            cmd.append("--include=" + ",".join(recipe.packages))
        for command in recipe.customize:
            cmd.append(f"--customize-hook=chroot \"$1\" sh -ec {_sh_quote(command)}")
        cmd += [recipe.suite, str(tmp / "rootfs")]
        if recipe.mirror:
            cmd.append(recipe.mirror)
        if shutil.which("mmdebstrap") is None:
            raise ImageError("mmdebstrap is not installed: apt-get install mmdebstrap")
        progress(f"building image {recipe.name} ({recipe.suite}/{recipe.variant}"
                 f"{', ' + ' '.join(recipe.packages) if recipe.packages else ''}) ...")
        started = time.monotonic()
        import subprocess

        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ImageError(f"building image {recipe.name} failed:\n{proc.stdout[-4000:]}")
        size = _tree_size(tmp / "rootfs")
        (tmp / "meta.json").write_text(json.dumps(
            {"recipe": recipe.name, "env": list(recipe.env), "size": size, "built_at": time.time()}))
        os.rename(tmp, layer)
        progress(f"built image {recipe.name} in {time.monotonic() - started:.1f}s ({size / 1e6:.0f} MB)")


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                continue
    return total


def print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
