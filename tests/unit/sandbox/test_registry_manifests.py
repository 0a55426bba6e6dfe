"""Reading references, manifests, indexes and configs from untrusted bytes (pure)."""

from __future__ import annotations

import json

import pytest

from pipelines.references import parse_reference
from worker.sandbox.registry import manifests as mf
from worker.sandbox.registry.naming import canonical, name_key, pull_allowed
from worker.sandbox.registry.skopeo import PullError, PullRefused, translate

D = "sha256:" + "a" * 64


@pytest.mark.parametrize("text, full", [
    ("node:20", "docker.io/library/node:20"), ("node", "docker.io/library/node:latest"),
    ("team/app", "docker.io/team/app:latest"), ("docker.io/debian:12", "docker.io/library/debian:12"),
    ("index.docker.io/library/x:1", "docker.io/library/x:1"), ("ghcr.io/o/r:v1", "ghcr.io/o/r:v1"),
    ("localhost:5000/x", "localhost:5000/x:latest"), (f"x@{D}", f"docker.io/library/x@{D}"),
    (f"x:1@{D}", f"docker.io/library/x:1@{D}"),
])
def test_canonical_references(text, full):
    """A reference reads as ``docker pull`` reads it; the store keys names by the canonical text."""
    assert str(canonical(parse_reference(text))) == full
    assert name_key(canonical(parse_reference(text))) == name_key(parse_reference(full))


@pytest.mark.parametrize("domain, allowed, ok", [
    (None, ("docker.io",), True), ("docker.io", ("index.docker.io",), True), ("ghcr.io", ("docker.io",), False),
    ("127.0.0.1:5000", ("127.0.0.1:5000",), True), ("127.0.0.1:5001", ("127.0.0.1:5000",), False),
    ("anything.example", ("*",), True), (None, (), False),
])
def test_only_listed_registries_are_pulled_from(domain, allowed, ok):
    assert pull_allowed(domain, allowed) is ok


def manifest(**over: object) -> bytes:
    data: dict[str, object] = {
        "schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
        "config": {"mediaType": mf.CONFIGS[0], "digest": D, "size": 10},
        "layers": [{"mediaType": mf.LAYERS[1], "digest": D, "size": 5}]}
    data.update(over)
    return json.dumps(data).encode()


@pytest.mark.parametrize("raw, says", [
    (b"nope", "not JSON"), (b"[]", "not a JSON object"),
    (json.dumps({"schemaVersion": 1, "fsLayers": []}).encode(), "schema 1"),
    (manifest(mediaType="application/x-evil"), "media type"),
    (manifest(layers=[{"mediaType": mf.LAYERS[1], "digest": "sha256:../../x", "size": 1}]), "digest"),
    (manifest(layers=[{"mediaType": mf.LAYERS[1], "digest": D, "size": -1}]), "size"),
    (manifest(layers=[{"mediaType": mf.LAYERS[1], "digest": D, "size": True}]), "size"),
    (manifest(layers=[{"mediaType": "application/vnd.oci.image.layer.v1.tar+bzip2", "digest": D, "size": 1}]),
     "cannot use"),
    (manifest(layers=[{"mediaType": mf.LAYERS[1], "digest": D, "size": 1, "urls": ["http://x"]}]), "foreign"),
    (manifest(layers=[{"mediaType": mf.LAYERS[1], "digest": D, "size": 1}] * 128), "at most 127"),
    (manifest(config="x"), "config is not an object"),
])
def test_bad_manifests_are_refused_naming_the_field(raw, says):
    with pytest.raises(mf.ManifestError, match=says):
        mf.parse_manifest(raw)


def test_a_good_manifest_and_docker_v2():
    assert mf.parse_manifest(manifest()).layers[0].size == 5
    docker = manifest(mediaType=mf.DOCKER_MANIFEST, config={"mediaType": mf.CONFIGS[1], "digest": D, "size": 1},
                      layers=[{"mediaType": mf.LAYERS[3], "digest": D, "size": 7}])
    assert mf.parse_manifest(docker).layers[0].media_type == mf.LAYERS[3]


def index(*platforms: tuple[str, str, str]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": [
        {"mediaType": mf.OCI_MANIFEST, "digest": "sha256:" + str(i) * 64, "size": 1,
         "platform": {"os": o, "architecture": a, **({"variant": v} if v else {})}}
        for i, (o, a, v) in enumerate(platforms, start=1)]}).encode()


@pytest.mark.parametrize("platforms, host, chosen", [
    ([("linux", "arm64", "v8"), ("linux", "amd64", "")], ("linux", "amd64", ""), 2),
    ([("linux", "arm", "v6"), ("linux", "arm", "v7")], ("linux", "arm", "v7"), 2),
    ([("windows", "amd64", ""), ("linux", "amd64", "")], ("linux", "amd64", ""), 2),
    ([("linux", "arm64", "")], ("linux", "arm64", "v8"), 1),
])
def test_an_index_gives_the_host_platform(platforms, host, chosen):
    assert mf.choose_platform(index(*platforms), host).digest == "sha256:" + str(chosen) * 64


def test_an_index_without_the_host_platform_says_what_it_has():
    with pytest.raises(mf.ManifestError, match=r"linux/amd64 \(it has: linux/arm64, linux/s390x\)"):
        mf.choose_platform(index(("linux", "arm64", ""), ("linux", "s390x", "")), ("linux", "amd64", ""))


def test_config_env_entries_pass_the_env_grammar():
    raw = json.dumps({"os": "linux", "architecture": "amd64", "rootfs": {"diff_ids": [D]}, "config": {
        "Env": ["PATH=/bin", "A B=1", "=x", "NOEQUALS", "OK_2=a=b"], "Entrypoint": ["/init"], "Cmd": None,
        "User": "1000", "WorkingDir": "/app", "ExposedPorts": {"5432/tcp": {}}}}).encode()
    config, dropped = mf.parse_config(raw)
    assert config.env == (("PATH", "/bin"), ("OK_2", "a=b"))
    assert dropped == ("A B=1", "=x", "NOEQUALS")
    assert (config.entrypoint, config.cmd, config.user, config.workdir, config.ports) == (
        ("/init",), (), "1000", "/app", ("5432/tcp",))


@pytest.mark.parametrize("raw, says", [
    ({"rootfs": {"diff_ids": ["md5:x"]}}, "diff_ids"), ({"rootfs": {}}, "diff_ids"),
    ({"rootfs": {"diff_ids": []}, "config": {"Env": "PATH=/bin"}}, "Env"),
    ({"rootfs": {"diff_ids": []}, "config": {"User": 0}}, "User"),
])
def test_bad_configs_are_refused(raw, says):
    with pytest.raises(mf.ManifestError, match=says):
        mf.parse_config(json.dumps(raw).encode())


@pytest.mark.parametrize("stderr, kind", [
    (b'time="x" level=fatal msg="reading manifest 9 in 127.0.0.1:5000/x: manifest unknown"', PullRefused),
    (b'level=fatal msg="initializing source docker://x: unauthorized: authentication required"', PullRefused),
    (b'level=fatal msg="requested access to the resource is denied"', PullRefused),
    (b'level=fatal msg="pinging container registry x: dial tcp: connection refused"', PullError),
    (b'level=fatal msg="x509: certificate signed by unknown authority\x1b[31m"', PullError),
    (b"", PullError),
])
def test_skopeo_failures_are_refusals_or_pull_errors(stderr, kind):
    """A registry's "no such image" or "denied" is the request's fault; anything else is sandpit's
    (retryable); the message is one line without control characters."""
    error = translate("docker://x", stderr)
    assert type(error) is kind
    assert "\x1b" not in str(error) and "\n" not in str(error)
