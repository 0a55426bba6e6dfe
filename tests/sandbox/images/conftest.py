"""The loopback registry and the test images, made once per session.

``multilayer:1`` is the Debian rootfs the suite builds (a zstd layer) under two gzip layers with
whiteouts: layer 2 adds ``/opt/app/hello.txt`` and ``/opt/app/keep``, deletes ``/etc/motd`` and
makes ``/usr/share/doc`` opaque (only ``only-this`` is left in it); layer 3 deletes
``/opt/app/hello.txt`` and adds ``/opt/app/layer3``. ``small:1`` and ``small:2`` are two small
images sharing their first layer (not runnable: store tests only).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_root, require_tools
from tests.sandbox.conftest import TEST_STATE
from tests.sandbox.images.layers import directory, member, tar_bytes
from tests.sandbox.images.registry import Layout, Registry
from worker.sandbox.images import ImageStore
from worker.sandbox.registry.config import RegistryConfig
from worker.settings import REPO_IMAGES

LAYER2 = [directory("opt/app"), member("opt/app/hello.txt", b"hello from layer 2\n"), member("opt/app/keep", b"kept\n"),
          member("etc/.wh.motd"), member("usr/share/doc/.wh..wh..opq"), member("usr/share/doc/only-this", b"x\n")]
LAYER3 = [member("opt/app/.wh.hello.txt"), member("opt/app/layer3", b"from layer 3\n", mode=0o4755)]
SHARED = [member("shared/base.txt", b"shared base\n" * 1000)]


@pytest.fixture(scope="session")
def debian_tar(tmp_path_factory: pytest.TempPathFactory, settings) -> bytes:
    """The suite's Debian rootfs as one uncompressed tar (numeric owners, as a layer holds them)."""
    rootfs = ImageStore(settings.state_dir, settings.images_dir).get("debian").rootfs
    out = tmp_path_factory.mktemp("debian") / "rootfs.tar"
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(out), "."], check=True)
    data = out.read_bytes()
    out.unlink()
    return data


@pytest.fixture(scope="session")
def layout(tmp_path_factory: pytest.TempPathFactory, debian_tar: bytes) -> Layout:
    lay = Layout(tmp_path_factory.mktemp("layout") / "oci")
    lay.tag("1", lay.image([(debian_tar, "zstd"), (tar_bytes(LAYER2), "gzip"), (tar_bytes(LAYER3), "gzip")],
                           env=("GREETING=hello from the image config",)))
    shared = tar_bytes(SHARED)
    lay.tag("small-1", lay.image([(shared, "gzip"), (tar_bytes([member("one", b"1\n")]), "gzip")]))
    lay.tag("small-2", lay.image([(shared, "gzip"), (tar_bytes([member("two", b"2\n" * 5000)]), "zstd")]))
    amd = lay.image([(tar_bytes([member("arch", b"amd64\n")]), "gzip")], arch="amd64")
    arm = lay.image([(tar_bytes([member("arch", b"arm64\n")]), "gzip")], arch="arm64")
    lay.tag("multiarch", lay.multi_arch([arm, amd]))
    return lay


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, layout: Layout) -> Iterator[Registry]:
    """An anonymous registry holding test/multilayer:1, test/small:1, test/small:2, test/multiarch:1."""
    require_root()
    require_tools("docker-registry", "skopeo")
    with Registry(tmp_path_factory.mktemp("registry")) as reg:
        reg.push(layout.root, "1", "test/multilayer:1")
        reg.push(layout.root, "small-1", "test/small:1")
        reg.push(layout.root, "small-2", "test/small:2")
        reg.push(layout.root, "small-1", "test/docker-v2:1", fmt="v2s2")
        reg.push(layout.root, "multiarch", "test/multiarch:1")
        yield reg


def store_for(tmp: Path, reg: Registry, **config: object) -> ImageStore:
    """An image store of its own under ``tmp`` that may pull from ``reg``; its pulls make their
    private directories in the suite's state dir (skopeo's uid cannot reach pytest's 0700 ``tmp``)."""
    tmp.mkdir(parents=True, exist_ok=True)
    config.setdefault("pull_dir", TEST_STATE)
    cfg = RegistryConfig(allowed=(reg.host,), registries_conf=reg.registries_conf(tmp / "registries.conf"),
                         **config)  # type: ignore[arg-type]
    return ImageStore(tmp / "state", REPO_IMAGES, registry=cfg)


@pytest.fixture()
def reachable_dir() -> Iterator[Path]:
    """A fresh directory under the suite's state dir, for a state dir of the test's own whose pulls'
    uid must reach it (pytest's temporary directories are 0700); removed afterwards."""
    import shutil
    import tempfile

    TEST_STATE.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=".test-", dir=TEST_STATE))
    os.chmod(path, 0o711)  # noqa: S103 - search only, as the state dir itself
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def lines() -> list[str]:
    return []
