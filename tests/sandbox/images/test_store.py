"""The pulled part of the image store: imports of docker-save and OCI archives, list, prune, the
LRU size cap, layers held by a running job, and records that fail their grammar."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.sandbox.conftest import TEST_STATE
from tests.sandbox.images.conftest import store_for
from tests.sandbox.images.registry import SKOPEO_ENV
from worker.errors import ImageError, InvalidRequest, UnknownImage
from worker.sandbox.images import ImageStore
from worker.sandbox.registry.archive import ArchiveError
from worker.sandbox.registry.config import RegistryConfig
from worker.settings import REPO_IMAGES


def archive(layout, tag: str, dest: str) -> None:
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", f"oci:{layout.root}:{tag}", dest], check=True,
                   env=SKOPEO_ENV, capture_output=True, timeout=120)


def air_gapped(tmp_path) -> ImageStore:
    """A store with no registry at all, as an air-gapped site has; its imports' skopeo works in the
    suite's state dir (its uid cannot reach pytest's 0700 ``tmp_path``)."""
    return ImageStore(tmp_path / "state", REPO_IMAGES, registry=RegistryConfig(pull_dir=TEST_STATE))


def test_import_a_docker_save_archive_under_its_repo_tags(tmp_path, layout, lines):
    archive(layout, "small-1", f"docker-archive:{tmp_path / 'saved.tar'}:team/tool:1.0")
    store = air_gapped(tmp_path)
    (image,) = store.import_archive(tmp_path / "saved.tar", progress=lines.append)
    assert image.name == "docker.io/team/tool:1.0" and image.source == "archive"
    again = store.get("team/tool:1.0", policy="never")
    assert again.digest == image.digest
    assert (again.layer_stack()[1][1] / "one").read_text() == "1\n"
    assert any("layer 2/2" in line for line in lines)


def test_import_an_oci_archive_needs_a_name_when_it_gives_only_a_tag(tmp_path, layout):
    archive(layout, "small-2", f"oci-archive:{tmp_path / 'image.tar'}:2")
    store = air_gapped(tmp_path)
    with pytest.raises(InvalidRequest, match="--tag"):
        store.import_archive(tmp_path / "image.tar")
    (image,) = store.import_archive(tmp_path / "image.tar", tag="registry.sandpit.invalid/team/two:2")
    assert (image.layer_stack()[1][1] / "two").read_bytes() == b"2\n" * 5000
    assert store.get("registry.sandpit.invalid/team/two:2").digest == image.digest


def test_importing_what_is_not_an_image_archive_says_so(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"not a tar at all" * 100)
    store = air_gapped(tmp_path)
    with pytest.raises(ArchiveError, match="not a readable tar archive"):
        store.import_archive(tmp_path / "x.tar")


def test_list_prune_and_the_lru_cap(tmp_path, registry):
    """Two images share a layer; the cap evicts the least recently used name first, prune then takes
    the layers no name holds (and only those)."""
    store = store_for(tmp_path, registry)
    one = store.get(f"{registry.host}/test/small:1")
    two = store.get(f"{registry.host}/test/small:2")
    names = {e[0]: e for e in store.pulled_entries()}
    assert set(names) == {f"{registry.host}/test/small:1", f"{registry.host}/test/small:2"}
    os.utime(tmp_path / "state" / "images" / "names" / _name_file(registry.host, "small:1"), (1, 1))
    store.get(f"{registry.host}/test/small:2")  # used now
    # room for small:2 (the shared layer and its own), not for small:1's own layer besides
    room = sum(store.pulled.layer_size(k) for k, _p in two.layer_stack())
    report = store.prune(max_bytes=room, grace_s=0)
    assert report.names == [f"{registry.host}/test/small:1"]
    assert report.layers == [one.layer_stack()[1][0]]  # its own layer; the shared one is two's too
    assert [e[0] for e in store.pulled_entries()] == [f"{registry.host}/test/small:2"]
    assert all(os.path.isdir(p) for _k, p in two.layer_stack())
    with pytest.raises(UnknownImage):
        store.get(f"{registry.host}/test/small:1", policy="never")


def _name_file(host: str, tag: str) -> str:
    from pipelines.references import parse_reference
    from worker.sandbox.registry.naming import canonical, name_key

    return name_key(canonical(parse_reference(f"{host}/test/{tag}"))) + ".json"


def test_a_layer_a_job_holds_is_never_pruned(tmp_path, registry):
    store = store_for(tmp_path, registry)
    image = store.get(f"{registry.host}/test/small:1")
    store.remove(f"{registry.host}/test/small:1")  # the name goes; prune keeps young layers (grace)
    with store.hold(image):
        report = store.prune(max_bytes=0, grace_s=0)
        assert sorted(report.busy) == sorted(k for k, _p in image.layer_stack())
        assert all(p.is_dir() for _k, p in image.layer_stack())
    report = store.prune(max_bytes=0, grace_s=0)
    assert sorted(report.layers) == sorted(k for k, _p in image.layer_stack())
    assert not any(p.exists() for _k, p in image.layer_stack())
    with pytest.raises(ImageError, match="removed from the store"):
        with store.hold(image):
            pass


def test_young_layers_survive_a_prune(tmp_path, registry):
    """A pull renames its layers into place before it writes the manifest naming them: a prune in
    between must not take them (the grace period)."""
    store = store_for(tmp_path, registry)
    image = store.get(f"{registry.host}/test/small:1")
    store.pulled.remove_name(__import__("pipelines.references", fromlist=["x"]).parse_reference(image.name))
    report = store.prune(max_bytes=0)
    assert report.layers == [] and all(p.is_dir() for _k, p in image.layer_stack())


@pytest.mark.parametrize("damage", [
    lambda d: {**d, "layers": [["../../etc", d["layers"][0][1], 1]]},
    lambda d: {**d, "shell": "/tmp/evil"},
    lambda d: {**d, "env": [["A=B", "1"]]},
    lambda d: {**d, "digest": "sha256:" + "0" * 64},
    lambda d: "not an object",
])
def test_a_damaged_manifest_record_is_never_trusted(tmp_path, registry, damage):
    """A stored record is data: a layer key that is not 64 hex, a shell that is not one sandpit
    looks for, a bad env name: the image is refused as damaged (and pulled again where allowed)."""
    store = store_for(tmp_path, registry)
    image = store.get(f"{registry.host}/test/small:1")
    record = tmp_path / "state" / "images" / "manifests" / f"{image.digest[7:]}.json"
    record.write_text(json.dumps(damage(json.loads(record.read_text()))))
    with pytest.raises(ImageError, match="damaged"):
        store.pulled.image(image.digest)
    with pytest.raises(UnknownImage):
        store.get(image.name, policy="never")
    again = store.get(image.name)  # if-not-present: pulled again over the damage
    assert again.digest == image.digest and store.pulled.image(image.digest) is not None


def test_cli_list_prune_and_rm(tmp_path, registry, settings, reachable_dir):
    conf = registry.registries_conf(tmp_path / "registries.conf")
    env = {"PATH": os.environ["PATH"], "SANDPIT_STATE_DIR": str(reachable_dir / "state"),
           "SANDPIT_RUN_DIR": str(settings.run_dir), "SANDPIT_REGISTRIES": registry.host,
           "SANDPIT_REGISTRIES_CONF": str(conf)}

    def sandpit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "worker", "images", *args], env=env, capture_output=True,
                              text=True, timeout=300, cwd=REPO)

    p = sandpit("pull", f"{registry.host}/test/small:1", f"{registry.host}/test/small:2")
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("layer 1/2") >= 2 and "already here" in p.stderr
    p = sandpit("list")
    rows = [line.split("\t") for line in p.stdout.splitlines()[1:]]
    assert {(r[0], r[1]) for r in rows} == {(f"{registry.host}/test/small:1", "registry"),
                                            (f"{registry.host}/test/small:2", "registry")}
    assert all(r[2].startswith("sha256:") and r[3].endswith("MB") and "last used" in r[4] for r in rows)
    p = sandpit("rm", f"{registry.host}/test/small:1")
    assert p.returncode == 0 and "removed" in p.stdout
    p = sandpit("prune", "--max-size", "nonsense")
    assert p.returncode == 2 and "--max-size" in p.stderr and "Traceback" not in p.stderr
    p = sandpit("pull", "localhost:1/never:1")
    assert p.returncode == 125 and "is not a registry sandpit may pull from" in p.stderr
    assert "Traceback" not in p.stderr
