"""Pulls from a real registry on loopback into an image store of the test's own."""

from __future__ import annotations

import contextlib
import os
import stat
import threading

import pytest

from tests.conftest import require_tools
from tests.sandbox.conftest import TEST_STATE
from tests.sandbox.images.conftest import store_for
from tests.sandbox.images.registry import Registry
from worker.errors import ImageError, UnknownImage
from worker.sandbox.images import ImageStore
from worker.sandbox.registry.skopeo import PullError, PullRefused


def test_a_multilayer_image_is_pulled_checked_and_unpacked_once_per_layer(tmp_path, registry, lines):
    """Three layers (zstd + gzip), whiteouts as overlay whiteouts, the config's env, bash found
    across layers (Debian's /bin is a symlink in layer 1), per-layer progress reported."""
    store = store_for(tmp_path, registry)
    image = store.get(f"{registry.host}/test/multilayer:1", progress=lines.append)
    assert image.name == f"{registry.host}/test/multilayer:1" and image.source == "registry"
    assert len(image.layer_stack()) == 3
    assert ("GREETING", "hello from the image config") in image.env
    assert image.shell == "/usr/bin/bash"
    top, middle = image.layer_stack()[2][1], image.layer_stack()[1][1]
    motd = os.lstat(middle / "etc" / "motd")
    assert stat.S_ISCHR(motd.st_mode) and motd.st_rdev == 0
    assert os.getxattr(middle / "usr" / "share" / "doc", "trusted.overlay.opaque") == b"y"
    assert stat.S_IMODE(os.lstat(top / "opt" / "app" / "layer3").st_mode) == 0o4755
    text = "\n".join(lines)
    for i in (1, 2, 3):
        assert f"layer {i}/3 sha256:" in text and "unpacked" in text
    assert "pulled " in text
    assert image.config is not None and image.config.ports == ("8080/tcp",)
    # what a job would run on: only the stored layers, never the blobs (deleted once unpacked)
    assert not [p for p in (tmp_path / "state" / "images").iterdir() if p.name.startswith((".pull-", ".tmp-"))]


def test_if_not_present_needs_no_registry_and_always_does(tmp_path, layout, lines):
    """Once pulled, the store answers a tag without the network (the registry is stopped);
    ``always`` asks the registry and fails as a pull error (infra), ``never`` refuses what is absent."""
    with Registry(tmp_path / "reg") as reg:
        reg.push(layout.root, "small-1", "test/small:1")
        store = store_for(tmp_path, reg)
        first = store.get(f"{reg.host}/test/small:1")
    again = store.get(f"{reg.host}/test/small:1")
    assert again.digest == first.digest
    with pytest.raises(PullError, match="cannot pull"):
        store.get(f"{reg.host}/test/small:1", policy="always")
    with pytest.raises(UnknownImage, match="pull policy is never"):
        store.get(f"{reg.host}/test/small:2", policy="never")


def test_layers_are_shared_by_digest_between_images(tmp_path, registry, lines):
    """small:1 and small:2 share their first layer: pulling the second fetches only its own."""
    store = store_for(tmp_path, registry)
    one = store.get(f"{registry.host}/test/small:1")
    shared = one.layer_stack()[0][0]
    before = registry.blob_fetches(_blob_digest(store, one, 0))
    two = store.get(f"{registry.host}/test/small:2", progress=lines.append)
    assert two.layer_stack()[0][0] == shared and two.layer_stack()[1][0] != one.layer_stack()[1][0]
    assert registry.blob_fetches(_blob_digest(store, one, 0)) == before
    assert any("layer 1/2" in line and "already here" in line for line in lines)
    layers = sorted(p.name for p in (tmp_path / "state" / "images" / "layers").iterdir())
    assert len(layers) == 3


def _blob_digest(store, image, index: int) -> str:
    return store.pulled.image(image.digest).layers[index].digest


def test_concurrent_pulls_of_one_image_share_one_download(tmp_path, layout):
    """Four threads pull the same new image at once: the registry serves each blob once."""
    with Registry(tmp_path / "reg") as reg:
        reg.push(layout.root, "1", "test/multilayer:1")
        store = store_for(tmp_path, reg)
        results, errors, said = [], [], []
        # one store each, made before the threads start (store_for rewrites the registries.conf they read)
        stores = [store_for(tmp_path, reg) for _ in range(4)]

        def pull(mine: ImageStore) -> None:
            try:
                results.append(mine.get(f"{reg.host}/test/multilayer:1", progress=said.append))
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=pull, args=(mine,)) for mine in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors and len({r.digest for r in results}) == 1
        stored = store.pulled.image(results[0].digest)
        for layer in stored.layers:
            assert reg.blob_fetches(layer.digest) == 1, layer.digest
        assert any("waiting for another pull" in line for line in said)


def test_an_index_resolves_to_the_host_platform(tmp_path, registry):
    store = store_for(tmp_path, registry)
    image = store.get(f"{registry.host}/test/multiarch:1")
    assert (image.layer_stack()[0][1] / "arch").read_text() == "amd64\n"


def test_docker_v2_schema2_manifests_are_pulled(tmp_path, registry):
    store = store_for(tmp_path, registry)
    image = store.get(f"{registry.host}/test/docker-v2:1")
    assert (image.layer_stack()[1][1] / "one").read_text() == "1\n"


def test_pull_by_digest_and_a_tampered_blob_or_manifest_is_refused(tmp_path, layout):
    """A blob whose bytes were changed in the registry's storage fails the pull and nothing of it is
    stored; a manifest fetched by digest that does not hash to it is refused the same way."""
    with Registry(tmp_path / "reg") as reg:
        reg.push(layout.root, "small-2", "test/small:2")
        store = store_for(tmp_path, reg)
        digest = layout.tag("small-2", _descriptor(layout, "small-2"))
        manifest = (layout.root / "blobs" / "sha256" / digest[7:]).read_bytes()
        import json

        layer = json.loads(manifest)["layers"][1]["digest"]
        data = reg.blob_file(layer)
        data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\0")
        with pytest.raises(ImageError, match=r"digest|match"):
            store.get(f"{reg.host}/test/small@{digest}")
        state = tmp_path / "state" / "images"
        assert not (state / "manifests").exists() or not list((state / "manifests").iterdir())
        assert not (state / "names").exists() or not list((state / "names").iterdir())
        mf = reg.blob_file(digest)
        mf.write_bytes(mf.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion":2 '))
        with pytest.raises(PullError, match="hash"):
            store.get(f"{reg.host}/test/small@{digest}")


def _descriptor(layout, tag: str) -> dict:
    import json

    index = json.loads((layout.root / "index.json").read_text())
    entry = next(e for e in index["manifests"] if e["annotations"]["org.opencontainers.image.ref.name"] == tag)
    return {k: v for k, v in entry.items() if k != "annotations"}


def test_basic_auth_from_the_auth_file_only(tmp_path, layout):
    require_tools("htpasswd")
    """A registry behind basic auth refuses an anonymous pull (a refusal, not a failure); with the
    operator's auth.json the pull works."""
    with Registry(tmp_path / "reg", auth=("ci", "s3cret-pass")) as reg:
        reg.push(layout.root, "small-1", "test/private:1")
        anonymous = store_for(tmp_path / "anon", reg)
        with pytest.raises(PullRefused, match=r"unauthorized|authentication required"):
            anonymous.get(f"{reg.host}/test/private:1")
        authed = store_for(tmp_path / "authed", reg, auth_file=reg.auth_json(tmp_path / "auth.json"))
        image = authed.get(f"{reg.host}/test/private:1")
        assert (image.layer_stack()[1][1] / "one").read_text() == "1\n"


def test_bearer_tokens_docker_hubs_flow(tmp_path, layout):
    """A registry behind a token server (Docker Hub's flow): anonymously the token grants nothing
    and the pull is refused; with the operator's auth.json the token server gets the basic
    credentials, grants pull, and the pull works."""
    from tests.sandbox.images.tokens import TokenServer

    with TokenServer(tmp_path / "tokens", users={"ci": "t0ken-pass"}, grants={"ci": ["pull", "push"]}) as tokens, \
            Registry(tmp_path / "reg", auth_section=tokens.registry_auth(), creds=("ci", "t0ken-pass")) as reg:
        reg.push(layout.root, "small-1", "test/private:1")
        anonymous = store_for(tmp_path / "anon", reg)
        with pytest.raises(PullRefused, match=r"unauthorized|denied|authentication required"):
            anonymous.get(f"{reg.host}/test/private:1")
        assert any(r.get("user") is None for r in tokens.requests)
        tokens.requests.clear()
        authed = store_for(tmp_path / "authed", reg, auth_file=reg.auth_json(tmp_path / "auth.json"))
        image = authed.get(f"{reg.host}/test/private:1")
        assert (image.layer_stack()[1][1] / "one").read_text() == "1\n"
        assert tokens.requests and all(r.get("user") == "ci" for r in tokens.requests)
        assert any("repository:test/private:pull" in r.get("scopes", []) for r in tokens.requests)


def test_a_registry_the_operator_did_not_list_is_never_contacted(tmp_path, registry):
    store = store_for(tmp_path, registry)  # it may pull from registry.host (127.0.0.1:PORT) only
    before = registry.requests()
    other = f"127.0.0.1:{registry.port}".replace("127.0.0.1", "localhost")
    with pytest.raises(UnknownImage, match=r"localhost:\d+ is not a registry sandpit may pull from"):
        store.get(f"{other}/test/small:1")
    assert registry.requests() == before


def test_a_mirror_from_registries_conf_serves_a_registry_that_does_not_resolve(tmp_path, registry):
    """``registry.sandpit.invalid`` (a name that never resolves) is served by its mirror, the
    loopback registry: how an air-gapped site reaches images."""
    from worker.sandbox.images import ImageStore
    from worker.sandbox.registry.config import RegistryConfig
    from worker.settings import REPO_IMAGES

    conf = registry.registries_conf(tmp_path / "registries.conf", extra=(
        '\n[[registry]]\nlocation = "registry.sandpit.invalid"\n'
        f'[[registry.mirror]]\nlocation = "{registry.host}"\ninsecure = true\n'))
    store = ImageStore(tmp_path / "state", REPO_IMAGES,
                       registry=RegistryConfig(allowed=("registry.sandpit.invalid",), registries_conf=conf,
                                               pull_dir=TEST_STATE))
    image = store.get("registry.sandpit.invalid/test/small:1")
    assert image.name == "registry.sandpit.invalid/test/small:1"
    assert (image.layer_stack()[1][1] / "one").read_text() == "1\n"


def test_an_unknown_tag_is_a_refusal_naming_it(tmp_path, registry):
    store = store_for(tmp_path, registry)
    with pytest.raises(PullRefused, match=r"manifest unknown|not found"):
        store.get(f"{registry.host}/test/small:404")


def test_a_layer_over_the_size_cap_fails_the_pull_and_leaves_nothing(tmp_path, registry):
    """The operator's layer cap (SANDPIT_LAYER_MAX_SIZE) applies to a real pull: small:2's second
    layer unpacks to ~10 KB, over a 4 KiB cap; the pull fails naming the cap, and no layer,
    manifest or name of it is kept (its first layer, within the cap, may stay for later pulls)."""
    from worker.sandbox.registry.config import LayerCaps
    from worker.sandbox.registry.unpack import LayerError

    store = store_for(tmp_path, registry, caps=LayerCaps(max_bytes=4096))
    with pytest.raises(LayerError, match="larger than 4096 bytes uncompressed"):
        store.get(f"{registry.host}/test/small:2")
    state = tmp_path / "state" / "images"
    assert not list((state / "manifests").glob("*.json")) if (state / "manifests").exists() else True
    assert not (state / "names").exists() or not list((state / "names").iterdir())
    leftovers = [p.name for p in state.iterdir() if p.name.startswith((".pull-", ".tmp-"))]
    leftovers += [p.name for p in (state / "layers").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_skopeo_runs_as_an_unprivileged_uid_in_a_box_removed_after_the_pull(tmp_path, layout):
    """While the pull runs, what skopeo wrote (the layout, each blob) belongs to a uid of sandpit's
    range, not root, in a 0700 directory of that uid; the credentials are a 0600 copy of that uid's
    for the pull. Afterwards nothing of it is left."""
    require_tools("htpasswd")
    from worker.sandbox.registry.config import RegistryConfig

    seen: list[dict[str, object]] = []
    before = {p.name for p in TEST_STATE.glob(".pull-*")}
    base, slots = RegistryConfig().uid_base, RegistryConfig().uid_slots

    def watch(line: str) -> None:
        if "downloaded, unpacking" not in line:
            return
        (box,) = [p for p in TEST_STATE.glob(".pull-*") if p.name not in before]
        owners = {(box / "layout").stat().st_uid}
        for blob in (box / "blobs" / "sha256").iterdir():  # another layer's may be unpacked and gone
            with contextlib.suppress(FileNotFoundError):
                if blob.stat().st_size > 0:  # not one of sandpit's placeholders
                    owners.add(blob.stat().st_uid)
        auth = box / "home" / "auth.json"
        seen.append({"box": box.stat(), "owners": owners, "auth": auth.stat()})

    with Registry(tmp_path / "reg", auth=("ci", "s3cret-pass")) as reg:
        reg.push(layout.root, "small-1", "test/private:1")
        original = reg.auth_json(tmp_path / "auth.json")
        store = store_for(tmp_path / "s", reg, auth_file=original)
        store.pull(f"{reg.host}/test/private:1", progress=watch)
    assert seen, "no layer was downloaded"
    for state in seen:
        box, auth = state["box"], state["auth"]
        uid = box.st_uid  # type: ignore[attr-defined]
        assert base <= uid < base + slots * 65536 and (uid - base) % 65536 == 0
        assert stat.S_IMODE(box.st_mode) == 0o700  # type: ignore[attr-defined]
        assert state["owners"] == {uid}
        assert (auth.st_uid, stat.S_IMODE(auth.st_mode)) == (uid, 0o600)  # type: ignore[attr-defined]
    assert {p.name for p in TEST_STATE.glob(".pull-*")} == before
    assert original.stat().st_uid == 0  # the operator's file itself is never handed over


def test_what_a_pull_box_runs_has_its_uid_and_nothing_of_roots(tmp_path):
    """A command under the box's prefix (skopeo's) runs as the leased uid and gid, with no
    supplementary groups, no capabilities in any set and no_new_privs; a second box at the same
    time gets another uid; closing removes the directory and frees the uid."""
    import subprocess

    from worker.sandbox.registry.pull_box import PullBox

    with PullBox(TEST_STATE, uid_base=100_000_000, uid_slots=256, run_dir=None, registries_conf=None,
                 auth_file=None) as box, PullBox(TEST_STATE, uid_base=100_000_000, uid_slots=256, run_dir=None,
                                                 registries_conf=None, auth_file=None) as other:
        assert box.uid != other.uid
        text = subprocess.run([*box.argv(), "cat", "/proc/self/status"], capture_output=True, text=True,
                              check=True).stdout
        fields = {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}
        assert fields["Uid"].split() == [str(box.uid)] * 4 and fields["Gid"].split() == [str(box.uid)] * 4
        assert fields["Groups"] == "" and fields["NoNewPrivs"] == "1"
        assert all(int(fields[k], 16) == 0 for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"))
        assert box.path is not None and box.path.stat().st_uid == box.uid
        path = box.path
    assert not path.exists()


def test_a_pull_dir_the_pull_uid_cannot_reach_is_named_before_skopeo_runs(tmp_path, registry):
    """pytest's 0700 temporary directories are out of the pull uid's reach: the pull fails with a
    sentence naming the directory in the way, and leaves nothing."""
    store = store_for(tmp_path / "s", registry, pull_dir=tmp_path / "pulls")
    before = registry.requests()
    with pytest.raises(PullError, match=r"skopeo runs as uid \d+ and cannot reach .*pulls: .* is not searchable"):
        store.get(f"{registry.host}/test/small:1")
    assert registry.requests() == before and list((tmp_path / "pulls").iterdir()) == []
