"""Image recipes (``images/NAME/image.toml``) and the content-addressed image store.

Layout under ``<state>/images``::

    layers/<key>/rootfs     the unpacked tree, owned by host root, never written after build
    layers/<key>/meta.json  recipe, env, size
    refs/<name>.json        which key the recipe ``name`` currently points at

``key`` is the sha256 of the canonical recipe, so an unchanged recipe is never rebuilt.
Builds of one image are serialised by an flock; a build goes to a unique temporary directory
and is renamed into place, so a crash never leaves a half image under a key.

What a job names (``image: python:3.11``) is an image *reference*: it must parse as one
(:mod:`pipelines.references`) and be honoured by a recipe (its name or its ``provides`` list),
else the request is refused; nothing is mapped to a different version. Inside the store every
name is a single path component that passed a grammar (recipe names, 64-hex keys), and every
file is opened relative to the store's directory fd without following a symlink (``openat2``
with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``, see :mod:`worker.sandbox.beneath`). A ref whose
content fails its grammar (key not 64 hex, env not a list of string pairs) is refused as damaged.

Images from registries and archives live beside the recipes' (``names/``, ``manifests/``, and
layers keyed by diff_id in the same ``layers/``; :mod:`worker.sandbox.registry.pulled`). What a
reference resolves to, in order, the same for a job's ``image:`` and (later) a service's: a
recipe that provides it; else the store (by digest, or by the name unless the pull policy is
``always``); else a pull from its registry or the configured mirror, if the operator lets sandpit
pull from that registry (``SANDPIT_REGISTRIES``) and the policy is not ``never``
(:meth:`ImageStore.get`).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pipelines.files.locks import hold
from pipelines.files.temps import write_atomic
from pipelines.identifiers import is_layer_key
from pipelines.record import record
from pipelines.references import InvalidReference, honoured_by, recipe_provides
from worker import TYPE_CHECKING
from worker.errors import ImageError, InvalidRequest, UnknownImage
from worker.sandbox.beneath import NotBeneath, open_beneath

if TYPE_CHECKING:
    import threading
    from collections.abc import Iterator
    from typing import Any

    from pipelines.references import ImageReference
    from worker.sandbox.registry.config import RegistryConfig
    from worker.sandbox.registry.manifests import ImageConfig
    from worker.sandbox.registry.pruning import PruneReport
    from worker.sandbox.registry.pull import Puller
    from worker.sandbox.registry.pulled import PulledImage, PulledImages

BUILDER_VERSION = 1  # bump when the way recipes are built changes
_RECIPE_KEYS = {"suite", "variant", "packages", "env", "customize", "mirror", "provides"}
# a recipe (and so a ref file) name is one lowercase path component of the reference grammar
_RECIPE_NAME = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@record(frozen=True)
class Recipe:
    name: str
    suite: str
    variant: str = "minbase"
    packages: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    customize: tuple[str, ...] = ()
    mirror: str | None = None
    provides: tuple[str, ...] = ()  # the references it honours besides its name; not in the key

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
class StoredImage:
    name: str
    key: str
    rootfs: Path
    env: tuple[tuple[str, str], ...]
    size: int
    built_at: float
    #: (key, rootfs) of each layer, bottom first; empty for a recipe's one layer (``key``, ``rootfs``)
    layers: tuple[tuple[str, Path], ...] = ()
    shell: str | None = None  # found at pull time for a pulled image (None: look in ``rootfs``)
    digest: str | None = None  # a pulled image's manifest digest
    config: ImageConfig | None = None  # a pulled image's entrypoint, cmd, user, ports (for services)
    source: str = "recipe"  # recipe | registry | archive

    def layer_stack(self) -> tuple[tuple[str, Path], ...]:
        return self.layers or ((self.key, self.rootfs),)


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
    provides = data.get("provides", [])
    if not isinstance(provides, list) or not all(isinstance(v, str) for v in provides):
        problems.append("'provides' must be a list of image references such as \"python:3.11\"")
    else:
        try:
            recipe_provides(name, tuple(provides))
        except InvalidReference as exc:
            problems.append(str(exc))
    if problems:
        raise ImageError(f"images/{name}/image.toml: " + "; ".join(problems))
    return Recipe(
        name=name, suite=data["suite"], variant=data.get("variant", "minbase"),
        packages=tuple(data.get("packages", [])), env=tuple(sorted(env.items())),
        customize=tuple(data.get("customize", [])), mirror=data.get("mirror"),
        provides=tuple(provides),
    )


def is_recipe_name(name: object) -> bool:
    """A recipe's name: one lowercase component of the reference grammar (it names a folder
    and a ref file, so no '/', '..', ':' or anything else).

    >>> is_recipe_name("python"), is_recipe_name("../etc"), is_recipe_name("a:b")
    (True, False, False)
    """
    import re

    return isinstance(name, str) and len(name) <= 128 and re.fullmatch(_RECIPE_NAME, name, re.ASCII) is not None


def ref_from_json(name: str, text: bytes) -> tuple[str, tuple[tuple[str, str], ...], int, float]:
    """(key, env, size, built_at) of a stored ref, or ImageError "damaged" when any field fails
    its grammar: the key becomes a path and the env goes into the job, so neither is trusted.

    >>> ref_from_json("x", b'{"name": "x", "key": "' + b"a" * 64 + b'", "env": [["A", "1"]]}')[1]
    (('A', '1'),)
    """
    import re

    damaged = f"image {name!r} is damaged"
    try:
        ref = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise ImageError(f"{damaged} (its ref is not JSON); rebuild it with: sandpit images build {name}") from None
    if not isinstance(ref, dict):
        raise ImageError(f"{damaged} (its ref is not an object); rebuild it with: sandpit images build {name}")
    key, env = ref.get("key"), ref.get("env", [])
    size, built_at = ref.get("size", 0), ref.get("built_at", 0.0)
    why = None
    if ref.get("name", name) != name:
        why = "its ref names another image"
    elif not is_layer_key(key):
        why = "its layer key is not 64 hex digits"
    elif not isinstance(env, list) or not all(
            isinstance(e, list) and len(e) == 2 and all(isinstance(v, str) for v in e)
            and re.fullmatch(_ENV_NAME, e[0], re.ASCII) and "\0" not in e[1] for e in env):
        why = "its env is not a list of [NAME, value] string pairs"
    elif not isinstance(size, int) or isinstance(size, bool) or not isinstance(built_at, (int, float)):
        why = "its size or build time is not a number"
    if why is not None:
        raise ImageError(f"{damaged} ({why}); rebuild it with: sandpit images build {name}")
    assert isinstance(key, str)
    return key, tuple((e[0], e[1]) for e in env), size, float(built_at)


class ImageStore:
    def __init__(self, state_dir: Path, recipes_dir: Path, registry: RegistryConfig | None = None) -> None:
        self.root = state_dir / "images"
        self.recipes_dir = recipes_dir
        self._registry = registry
        self._puller: Puller | None = None

    # -- recipes -------------------------------------------------------------------------
    def recipe_names(self) -> list[str]:
        """Recipes whose folder name is a valid recipe name (anything else is not an image)."""
        try:
            names = os.listdir(self.recipes_dir)
        except OSError:
            return []
        return sorted(n for n in names if is_recipe_name(n) and (self.recipes_dir / n / "image.toml").is_file())

    def recipe(self, name: str) -> Recipe:
        if not is_recipe_name(name) or not (self.recipes_dir / name / "image.toml").is_file():
            known = ", ".join(self.recipe_names()) or "none"
            raise ImageError(f"no image recipe named {name!r} (known: {known})")
        return parse_recipe(name, (self.recipes_dir / name / "image.toml").read_text())

    def provided(self) -> dict[str, str]:
        """Every reference the recipes honour (reference → recipe name)."""
        out: dict[str, str] = {}
        for name in self.recipe_names():
            try:
                out.update(recipe_provides(name, self.recipe(name).provides))
            except ImageError:
                out[name] = name  # a broken recipe still answers to its name (and says why on build)
        return out

    def resolve(self, reference: str) -> str:
        """The recipe that honours ``reference``, or InvalidRequest (the job's spec is refused)
        naming the references that exist. The one place a job's ``image:`` becomes a name.

        A bare recipe name needs no recipe file read (the hot path of ``sandpit exec``)."""
        if is_recipe_name(reference) and (self.recipes_dir / reference).is_dir():
            return reference
        try:
            return honoured_by(reference, self.provided())
        except InvalidReference as exc:
            raise InvalidRequest(str(exc)) from None

    # -- store ---------------------------------------------------------------------------
    def _open_store_dir(self, sub: str, create: bool = False) -> int:
        """An fd of ``<store>/<sub>`` (the store root is the operator's; below it nothing is a
        symlink). FileNotFoundError when it does not exist and ``create`` is False."""
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        root = os.open(self.root, _DIR)
        try:
            if create:
                try:
                    os.mkdir(sub, 0o755, dir_fd=root)
                except FileExistsError:
                    pass
            return open_beneath(root, sub, _DIR)
        finally:
            os.close(root)

    def _read_beneath(self, dir_fd: int, path: str, limit: int = 1 << 20) -> bytes:
        fd = open_beneath(dir_fd, path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotBeneath(f"{path} is not a regular file")
            # sized by fstat: a 1 MiB read buffer per call cost 0.16 ms on exec's path
            data = os.read(fd, min(st.st_size, limit) + 1)
        finally:
            os.close(fd)
        if len(data) > limit:
            raise NotBeneath(f"{path} is larger than {limit} bytes")
        return data

    def get(self, reference: str, *, progress: Callable[[str], None] | None = None, policy: str | None = None,
            cancel: threading.Event | None = None) -> StoredImage:
        """The image ``reference`` names: a recipe's (ImageError saying how to build it when it is
        not built), else a pulled or imported one, pulled now when the policy and the operator's
        registries allow (UnknownImage, a refusal of the request, when nothing can honour it)."""
        try:
            name = self.resolve(reference)
        except InvalidRequest as refusal:
            if is_recipe_name(reference) and self._has_ref(reference):
                return self._load(reference)  # a built image whose recipe is gone
            return self._registry_image(reference, refusal, progress, policy, cancel)
        return self._load(name)

    # -- pulled and imported images ---------------------------------------------------------
    @property
    def registry(self) -> RegistryConfig:
        if self._registry is None:
            from worker.sandbox.registry.config import RegistryConfig

            self._registry = RegistryConfig()
        return self._registry

    @property
    def pulled(self) -> PulledImages:
        return self.puller.store

    @property
    def puller(self) -> Puller:
        if self._puller is None:
            from worker.sandbox.registry.pull import Puller
            from worker.sandbox.registry.pulled import PulledImages

            self._puller = Puller(PulledImages(self.root), self.registry)
        return self._puller

    def _has_ref(self, name: str) -> bool:
        return (self.root / "refs" / f"{name}.json").is_file()

    def _registry_image(self, text: str, refusal: InvalidRequest, progress: Callable[[str], None] | None,
                        policy: str | None, cancel: threading.Event | None) -> StoredImage:
        from pipelines.references import parse_reference
        from worker.sandbox.registry.naming import canonical, pull_allowed

        try:
            ref = canonical(parse_reference(text))
        except InvalidReference as exc:
            raise InvalidRequest(str(exc)) from None
        policy = policy or self.registry.policy
        found = self._stored(ref, policy)
        if found is not None:
            self.pulled.touch(ref)
            return self._as_image(ref, found)
        allowed = pull_allowed(ref.domain, self.registry.allowed)
        if not allowed and is_recipe_name(text):
            return self._load(text)  # a bare name nothing provides: "there is no image named ..."
        if not allowed or policy == "never":
            raise UnknownImage(self._refusal(text, ref, allowed))
        image = self.puller.pull(ref, progress or (lambda _m: None), cancel)
        self.pulled.set_name(ref, image.digest)
        if self.registry.max_store_bytes:
            self.prune(max_bytes=self.registry.max_store_bytes, keep=frozenset({image.digest}))
        return self._as_image(ref, image)

    def _stored(self, ref: ImageReference, policy: str) -> PulledImage | None:
        """The stored image ``ref`` names: by digest whatever the policy (content never changes),
        by name unless the policy is ``always``."""
        if ref.digest is None and policy == "always":
            return None
        digest = self.pulled.name(ref) or ref.digest
        if digest is None:
            return None
        try:
            return self.pulled.image(digest)
        except ImageError:
            return None  # damaged: pulled again where allowed, else refused as absent

    def _refusal(self, text: str, ref: ImageReference, allowed: bool) -> str:
        known = ", ".join(sorted(self.provided())) or "none"
        held = (f"the image store holds no image of digest {ref.digest}" if ref.digest
                else "the image store does not hold it")
        if allowed:
            why = "and the pull policy is never"
        else:
            listed = ", ".join(self.registry.allowed) or "none"
            why = (f"and {ref.domain} is not a registry sandpit may pull from (the operator lists them in "
                   f"SANDPIT_REGISTRIES; now: {listed})")
        return f"no image {text} here: no recipe provides it ({known}), {held}, {why}; it never substitutes " \
               "another version"

    def _as_image(self, ref: ImageReference, image: PulledImage) -> StoredImage:
        layers = tuple((la.key, self.pulled.layer_rootfs(la.key)) for la in image.layers)
        return StoredImage(name=str(ref), key=image.digest[7:], rootfs=layers[-1][1] if layers else self.root,
                     env=image.config.env, size=image.size, built_at=image.pulled_at, layers=layers,
                     shell=image.shell, digest=image.digest, config=image.config, source=image.source)

    def pull(self, reference: str, progress: Callable[[str], None] = lambda _m: None,
             cancel: threading.Event | None = None) -> StoredImage:
        """``sandpit images pull``: from the registry whatever the store holds (policy ``always``)."""
        return self.get(reference, progress=progress, policy="always", cancel=cancel)

    def import_archive(self, path: Path, tag: str | None = None,
                       progress: Callable[[str], None] = lambda _m: None) -> list[StoredImage]:
        from pipelines.references import parse_reference
        from worker.sandbox.registry.archive import import_archive

        done = import_archive(self.puller, path, tag, progress)
        return [self._as_image(parse_reference(ref), image) for ref, image in done]

    @contextlib.contextmanager
    def hold(self, image: StoredImage) -> Iterator[None]:
        """Keep ``image``'s layers from being pruned while a job uses them: a shared flock on each
        layer's directory (:mod:`worker.sandbox.registry.pruning` removes only what it can lock
        exclusively). ImageError when a layer went away before it was held."""
        from pipelines.files.locks import lock_fd

        fds: list[int] = []
        try:
            try:
                layers = self._open_store_dir("layers")
            except (NotBeneath, OSError) as exc:
                raise ImageError(f"image {image.name} is not usable: {_why(exc)}") from None
            try:
                for key, _path in image.layer_stack():
                    if not is_layer_key(key):
                        raise ImageError(f"image {image.name} is damaged (a layer key is not 64 hex digits)")
                    try:
                        fds.append(open_beneath(layers, key, _DIR))
                        lock_fd(fds[-1], shared=True)
                        os.close(open_beneath(fds[-1], "rootfs", _DIR | os.O_PATH))
                    except (NotBeneath, OSError):
                        raise ImageError(f"image {image.name} was removed from the store as the job started; "
                                         "run the job again") from None
            finally:
                os.close(layers)
            yield
        finally:
            for fd in fds:
                os.close(fd)

    def prune(self, *, max_bytes: int | None = None, keep: frozenset[str] = frozenset(),
              grace_s: float | None = None) -> PruneReport:
        """Remove what no reference holds; with a cap, the least recently used pulled images first."""
        from worker.sandbox.registry.pruning import prune

        recipe_keys = set()
        for name in self._ref_names():
            try:
                recipe_keys.add(self._load(name).key)
            except ImageError:
                continue
        cap = self.registry.max_store_bytes if max_bytes is None else max_bytes
        from worker.sandbox.registry.pruning import GRACE_S

        return prune(self.pulled, recipe_keys, max_bytes=cap, keep=keep, run_dir=self.registry.run_dir,
                     pull_dir=self.registry.pull_dir or self.root.parent,
                     grace_s=GRACE_S if grace_s is None else grace_s)

    def pulled_entries(self) -> list[tuple[str, str, int, float, str]]:
        """(reference, digest, size, last use, source) of every pulled or imported name."""
        out = []
        for reference, digest, used in self.pulled.names():
            try:
                image = self.pulled.image(digest)
            except ImageError:
                image = None
            out.append((reference, digest, image.size if image else -1, used, image.source if image else "damaged"))
        return out

    def _load(self, name: str) -> StoredImage:
        """The image whose ref is ``refs/<name>.json``: one fd on the store, and two ``openat2``
        beneath it (the ref, then the layer's rootfs) that refuse any symlink on the way."""
        assert is_recipe_name(name)
        damaged = f"image {name!r} is damaged; rebuild it with: sandpit images build {name}"
        try:
            root = os.open(self.root, _DIR)
        except FileNotFoundError:
            root = -1
        try:
            if root < 0:
                raise FileNotFoundError
            text = self._read_beneath(root, f"refs/{name}.json")
            key, env, size, built_at = ref_from_json(name, text)
            try:
                os.close(open_beneath(root, f"layers/{key}/rootfs", _DIR | os.O_PATH))
            except (NotBeneath, OSError) as exc:  # a ref whose layer is gone or planted
                raise ImageError(f"image {name!r} is damaged ({_why(exc)}); rebuild it with: "
                                 f"sandpit images build {name}") from None
        except FileNotFoundError:
            if name not in self.recipe_names():
                known = ", ".join(self.recipe_names()) or "none"
                raise UnknownImage(f"there is no image named {name!r} (images: {known}; recipes live in "
                                   f"{self.recipes_dir})") from None
            raise ImageError(f"image {name!r} is not built; build it with: sandpit images build {name}") from None
        except (NotBeneath, OSError) as exc:
            raise ImageError(f"{damaged} ({_why(exc)})") from None
        finally:
            if root >= 0:
                os.close(root)
        return StoredImage(name=name, key=key, rootfs=self.root / "layers" / key / "rootfs", env=env,
                     size=size, built_at=built_at)

    def _ref_names(self) -> list[str]:
        try:
            refs = self._open_store_dir("refs")
        except (NotBeneath, OSError):
            return []
        try:
            entries = os.listdir(refs)
        finally:
            os.close(refs)
        return sorted(e[:-5] for e in entries if e.endswith(".json") and is_recipe_name(e[:-5]))

    def list(self) -> list[StoredImage]:
        images = []
        for name in self._ref_names():
            try:
                images.append(self._load(name))
            except ImageError:
                continue
        return images

    def is_current(self, name: str) -> bool:
        try:
            return self._load(self.resolve(name)).key == self.recipe(self.resolve(name)).key()
        except (ImageError, InvalidRequest):
            return False

    def build(self, name: str, progress: Callable[[str], None] = lambda _m: None) -> tuple[StoredImage, bool]:
        """Build ``name`` unless its recipe's key is already in the store. Returns (image, built)."""
        recipe = self.recipe(name)
        key = recipe.key()
        assert is_layer_key(key)
        try:
            layers = self._open_store_dir("layers", create=True)
            refs = self._open_store_dir("refs", create=True)
        except (NotBeneath, OSError) as exc:
            raise ImageError(f"the image store {self.root} is not usable: {_why(exc)}") from None
        try:
            root = os.open(self.root, _DIR)
            try:
                lock = hold(f".build-{name}.lock", mode=0o644, dir_fd=root)
            finally:
                os.close(root)
            with lock:
                built = False
                try:
                    meta_text = self._read_beneath(layers, f"{key}/meta.json")
                except FileNotFoundError:
                    self._mmdebstrap(recipe, layers, key, progress)
                    built = True
                    meta_text = self._read_beneath(layers, f"{key}/meta.json")
                meta = json.loads(meta_text)
                ref = {"name": name, "key": key, "env": meta["env"], "size": meta["size"],
                       "built_at": meta["built_at"]}
                write_atomic(refs, f"{name}.json", json.dumps(ref).encode(), mode=0o644)
        except (NotBeneath, OSError) as exc:
            raise ImageError(f"building image {name} failed: {_why(exc)}") from None
        finally:
            os.close(layers)
            os.close(refs)
        return self._load(name), built

    def remove(self, name: str) -> None:
        import shutil

        if not is_recipe_name(name) or not (self._has_ref(name) or name in self.recipe_names()):
            try:
                name = self.resolve(name)
            except InvalidRequest:
                self._remove_pulled(name)
                return
        image = self._load(name)
        refs = self._open_store_dir("refs")
        try:
            os.unlink(f"{name}.json", dir_fd=refs)
        finally:
            os.close(refs)
        still_used = {img.key for img in self.list()}
        if image.key not in still_used:
            layers = self._open_store_dir("layers")
            try:
                # rmtree with dir_fd walks by fds and never follows a symlink
                shutil.rmtree(image.key, dir_fd=layers, ignore_errors=True)
            finally:
                os.close(layers)

    def _remove_pulled(self, text: str) -> None:
        from pipelines.references import parse_reference
        from worker.sandbox.registry.naming import canonical

        try:
            ref = canonical(parse_reference(text))
        except InvalidReference as exc:
            raise InvalidRequest(str(exc)) from None
        if not self.pulled.remove_name(ref):
            raise UnknownImage(f"there is no image {text} in the store")
        self.prune(max_bytes=0)

    def _mmdebstrap(self, recipe: Recipe, layers: int, key: str, progress: Callable[[str], None]) -> None:
        import shutil
        import subprocess
        import tempfile

        if shutil.which("mmdebstrap") is None:
            raise ImageError("mmdebstrap is not installed: apt-get install mmdebstrap")
        layers_path = self.root / "layers"
        # a unique name: two builders (or a crashed one) never share a temporary directory
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=layers_path))
        os.chmod(tmp, 0o755)  # noqa: S103 - as layers were before: public Debian content, read by runtimes
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
        progress(f"building image {recipe.name} ({recipe.suite}/{recipe.variant}"
                 f"{', ' + ' '.join(recipe.packages) if recipe.packages else ''}) ...")
        started = time.monotonic()
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
            if proc.returncode != 0:
                raise ImageError(f"building image {recipe.name} failed:\n{proc.stdout[-4000:]}")
            size = _tree_size(tmp / "rootfs")
            (tmp / "meta.json").write_text(json.dumps(
                {"recipe": recipe.name, "env": list(recipe.env), "size": size, "built_at": time.time()}))
            try:
                os.rename(tmp.name, key, src_dir_fd=layers, dst_dir_fd=layers)
            except OSError as exc:
                import errno

                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # the same recipe content under another name was built meanwhile: keep that one
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        progress(f"built image {recipe.name} in {time.monotonic() - started:.1f}s ({size / 1e6:.0f} MB)")


def _why(exc: BaseException) -> str:
    if isinstance(exc, NotBeneath):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)


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
