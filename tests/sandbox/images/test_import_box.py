"""``sandpit images import`` runs skopeo as a pull does: as an unprivileged uid of sandpit's range,
in a box of its own, on a copy of the archive; what it wrote is read by fd beneath the box, and a
symlink or a FIFO it left in place of a file is refused without anything outside being read."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.sandbox.conftest import TEST_STATE
from tests.sandbox.images.registry import SKOPEO_ENV
from worker.errors import ImageError, InvalidRequest, UnknownImage
from worker.sandbox.images import ImageStore
from worker.sandbox.registry.config import RegistryConfig
from worker.sandbox.registry.pull_box import setpriv_argv
from worker.settings import REPO_IMAGES

FORMATS = {"docker-archive": "docker-archive:{file}:team/tool:1.0", "oci-archive": "oci-archive:{file}:team/tool:1.0"}


def make_archive(layout, fmt: str, file) -> None:
    """``small:1`` of the suite's layout as a ``docker save`` or OCI archive, root's and 0600, in a
    directory only root can enter (pytest's ``tmp_path``): a file the pull uid cannot read itself."""
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", f"oci:{layout.root}:small-1",
                    FORMATS[fmt].format(file=file)], check=True, env=SKOPEO_ENV, capture_output=True, timeout=120)
    os.chmod(file, 0o600)


def air_gapped(tmp_path) -> ImageStore:
    return ImageStore(tmp_path / "state", REPO_IMAGES, registry=RegistryConfig(pull_dir=TEST_STATE))


def boxes() -> set[str]:
    return {p.name for p in TEST_STATE.glob(".pull-*")}


def nothing_stored(store: ImageStore) -> bool:
    root = store.pulled.root
    return not list(root.glob("manifests/*.json")) and not list(root.glob("names/*"))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_an_imports_skopeo_runs_as_the_pull_uid_on_a_copy_of_a_root_only_archive(tmp_path, layout, fmt):
    """While the layers unpack, everything skopeo wrote in the box (the image's folder, its
    manifest, every blob) and the box itself are a uid of sandpit's range, not root's; the archive
    it read is a 0400 copy of that uid's in the box, while the operator's file stays root's 0600 in
    a directory the uid cannot enter. The image is stored and usable; the box is gone after."""
    make_archive(layout, fmt, tmp_path / "image.tar")
    base, slots = RegistryConfig().uid_base, RegistryConfig().uid_slots
    before = boxes()
    seen: list[dict[str, object]] = []

    def watch(line: str) -> None:
        if "fetching" not in line or seen:
            return
        (box,) = [TEST_STATE / name for name in boxes() - before]
        owners = {p.stat().st_uid for p in (box / "image-0").iterdir()} | {(box / "image-0").stat().st_uid}
        seen.append({"box": box.stat(), "owners": owners, "copy": (box / "archive").stat(),
                     "files": sorted(p.name for p in (box / "image-0").iterdir())})

    store = air_gapped(tmp_path)
    (image,) = store.import_archive(tmp_path / "image.tar", progress=watch)
    assert seen, "no layer was fetched from the box"
    (state,) = seen
    box, copy = state["box"], state["copy"]
    uid = box.st_uid  # type: ignore[attr-defined]
    assert base <= uid < base + slots * 65536 and (uid - base) % 65536 == 0
    assert stat.S_IMODE(box.st_mode) == 0o700  # type: ignore[attr-defined]
    assert state["owners"] == {uid} and "manifest.json" in state["files"]  # type: ignore[operator]
    assert (copy.st_uid, stat.S_IMODE(copy.st_mode)) == (uid, 0o400)  # type: ignore[attr-defined]
    assert copy.st_size == (tmp_path / "image.tar").stat().st_size  # type: ignore[attr-defined]
    original = (tmp_path / "image.tar").stat()
    assert (original.st_uid, stat.S_IMODE(original.st_mode)) == (0, 0o600)
    refused = subprocess.run([*setpriv_argv(uid), "cat", str(tmp_path / "image.tar")], capture_output=True)
    assert refused.returncode != 0 and refused.stdout == b""  # the uid cannot read the operator's file itself
    assert image.name == "docker.io/team/tool:1.0" and image.source == "archive"
    assert (image.layer_stack()[1][1] / "one").read_text() == "1\n"
    assert boxes() == before


@pytest.mark.parametrize("planted", ["symlink", "fifo"])
@pytest.mark.parametrize("target", ["manifest", "config", "layer"])
def test_a_symlink_or_fifo_the_uid_left_for_a_file_is_refused_and_nothing_outside_is_read(
        tmp_path, layout, monkeypatch, target, planted):
    """The test plays a skopeo that went wrong: when the real skopeo (the uid's) has finished, that
    same uid replaces the manifest, the config or a layer blob in its folder with a symlink to an
    exact copy of the file outside the box (following it would import the image), or with a FIFO
    (opening it for reading would wait for ever). Either is refused with an ImageError naming what
    was found; nothing is stored, and the box is removed."""
    make_archive(layout, "docker-archive", tmp_path / "image.tar")
    store = air_gapped(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    skopeo = store.puller.skopeo
    real_copy = skopeo.copy

    def copy_then_plant(source, dest, *args, box=None, **kwargs):
        real_copy(source, dest, *args, box=box, **kwargs)
        folder = dest.removeprefix("dir:")
        manifest = json.loads(Path(folder, "manifest.json").read_bytes())
        name = {"manifest": "manifest.json", "config": manifest["config"]["digest"][7:],
                "layer": manifest["layers"][0]["digest"][7:]}[target]
        (outside / name).write_bytes(Path(folder, name).read_bytes())
        plant = f"ln -s {outside / name} {name}" if planted == "symlink" else f"mkfifo {name}"
        subprocess.run([*box.argv(), "sh", "-c", f"cd {folder} && rm {name} && {plant}"], check=True, timeout=30)

    monkeypatch.setattr(skopeo, "copy", copy_then_plant)
    before = boxes()
    why = "a symlink at image-0/" if planted == "symlink" else "something other than a regular file at image-0/"
    with pytest.raises(ImageError, match=f"importing .*image.tar.*: skopeo left {why}"):
        store.import_archive(tmp_path / "image.tar")
    assert nothing_stored(store)
    with pytest.raises(UnknownImage):
        store.get("team/tool:1.0", policy="never")
    assert boxes() == before


def test_a_file_that_is_no_image_archive_never_reaches_the_uid(tmp_path, layout):
    """FILE is read by root once: a FIFO (or a symlink to one) is refused at once as not a regular
    file, a root-only file that is no image archive is refused from its index, and neither makes a
    box, so the uid never gets a byte of them. A symlink to an archive imports it (the operator
    named it)."""
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "fifo", tmp_path / "to-fifo")
    secret = tmp_path / "secret"
    secret.write_bytes(b"root's own\n" * 100)
    os.chmod(secret, 0o600)
    store = air_gapped(tmp_path)
    before = boxes()
    for path in (tmp_path / "fifo", tmp_path / "to-fifo"):
        with pytest.raises(InvalidRequest, match=r"not a file sandpit can import \(not a regular file\)"):
            store.import_archive(path)
    with pytest.raises(ImageError, match="not a readable tar archive"):
        store.import_archive(secret)
    assert boxes() == before
    make_archive(layout, "oci-archive", tmp_path / "image.tar")
    os.symlink(tmp_path / "image.tar", tmp_path / "link.tar")
    (image,) = store.import_archive(tmp_path / "link.tar")
    assert image.name == "docker.io/team/tool:1.0"


def test_the_cli_imports_as_the_uid_and_says_what_it_refuses(tmp_path, layout, settings, reachable_dir):
    """``sandpit images import FILE`` prints the name and digest of what it stored; a FIFO given as
    FILE is a one-line refusal (exit 125, no traceback) that does not wait for a writer."""
    make_archive(layout, "docker-archive", tmp_path / "image.tar")
    os.mkfifo(tmp_path / "fifo")
    env = {"PATH": os.environ["PATH"], "SANDPIT_STATE_DIR": str(reachable_dir / "state"),
           "SANDPIT_RUN_DIR": str(settings.run_dir)}

    def sandpit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "worker", "images", *args], env=env, capture_output=True,
                              text=True, timeout=300, cwd=REPO)

    before = boxes()
    p = sandpit("import", str(tmp_path / "image.tar"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("docker.io/team/tool:1.0\tsha256:") and "layer 2/2" in p.stderr
    p = sandpit("import", str(tmp_path / "fifo"))
    assert p.returncode == 125 and "not a regular file" in p.stderr and "Traceback" not in p.stderr
    assert boxes() == before
