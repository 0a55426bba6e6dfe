"""A real registry on loopback (Debian's ``docker-registry``, the distribution registry), and test
images built here and pushed to it with ``skopeo copy`` from an OCI layout the test writes.

The registry listens on 127.0.0.1 at a free port, keeps its blobs in a temporary directory, speaks
plain HTTP (sandpit is told through a ``registries.conf`` that it is insecure, as a site would),
optionally with basic auth from an htpasswd file (``htpasswd -B``), and is stopped by its pid.
Its access log is kept, so a test can count what was fetched.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.sandbox.images.layers import compress

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd", "none": "application/vnd.oci.image.layer.v1.tar"}
SKOPEO_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    def __init__(self, workdir: Path, auth: tuple[str, str] | None = None, *, auth_section: str | None = None,
                 creds: tuple[str, str] | None = None) -> None:
        """``auth``: basic auth from an htpasswd file with that user; ``auth_section``: another
        ``auth:`` config (a token server's), ``creds`` then being what pushes use."""
        self.workdir = workdir
        self.auth = auth
        self.auth_section = auth_section
        self.creds = creds or auth
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.storage = workdir / "storage"
        self.log_path = workdir / "registry.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Registry:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        auth = self.auth_section or ""
        if self.auth:
            line = subprocess.run(["htpasswd", "-Bbn", *self.auth], capture_output=True, check=True).stdout
            (self.workdir / "htpasswd").write_bytes(line)
            auth = f"auth:\n  htpasswd:\n    realm: sandpit-test\n    path: {self.workdir / 'htpasswd'}\n"
        config = self.workdir / "config.yml"
        config.write_text(f"version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n"
                          f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n  delete:\n    enabled: true\n"
                          f"http:\n  addr: {self.host}\n{auth}")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1)
                return self
            except urllib.error.HTTPError:
                return self  # 401: up, with auth
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"docker-registry exited: {self.log_path.read_text()[-2000:]}") from None
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not answer within 20 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def blob_fetches(self, digest: str) -> int:
        """How many times the registry served the blob (GET, answered 200) since it started."""
        text = self.log_path.read_text(errors="replace")
        return sum(1 for line in text.splitlines()
                   if f"/blobs/{digest}" in line and '"GET ' in line and '" 200 ' in line)

    def requests(self) -> int:
        return sum(1 for line in self.log_path.read_text(errors="replace").splitlines() if '"GET /v2/' in line)

    def blob_file(self, digest: str) -> Path:
        hexd = digest.removeprefix("sha256:")
        return self.storage / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"

    def auth_json(self, path: Path) -> Path:
        assert self.creds is not None
        token = base64.b64encode(f"{self.creds[0]}:{self.creds[1]}".encode()).decode()
        path.write_text(json.dumps({"auths": {self.host: {"auth": token}}}))
        return path

    def registries_conf(self, path: Path, extra: str = "") -> Path:
        path.write_text(f'[[registry]]\nlocation = "{self.host}"\ninsecure = true\n{extra}')
        return path

    def push(self, layout: Path, tag: str, ref: str, *, fmt: str | None = None) -> None:
        """``skopeo copy oci:LAYOUT:TAG docker://HOST/REF`` (digests preserved unless ``fmt`` converts)."""
        cmd = ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"]
        if self.creds:
            cmd += ["--dest-creds", f"{self.creds[0]}:{self.creds[1]}"]
        cmd += ["--format", fmt] if fmt else ["--preserve-digests"]
        cmd += [f"oci:{layout}:{tag}", f"docker://{self.host}/{ref}"]
        subprocess.run(cmd, check=True, env=SKOPEO_ENV, capture_output=True, timeout=300)

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Layout:
    """An OCI image layout the test writes blob by blob (``oci:DIR:TAG`` for skopeo)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.index: list[dict[str, object]] = []
        self._compressed: dict[tuple[str, str], dict[str, object]] = {}

    def blob(self, data: bytes) -> dict[str, object]:
        digest = sha(data)
        path = self.root / "blobs" / "sha256" / digest[7:]
        if not path.exists():
            path.write_bytes(data)
        return {"digest": digest, "size": len(data)}

    def image(self, raw_layers: list[tuple[bytes, str]], *, env: tuple[str, ...] = (), arch: str = "amd64",
              entrypoint: list[str] | None = None, cmd: list[str] | None = None, user: str | None = None,
              workdir: str | None = None, path: str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              ) -> dict[str, object]:
        """A manifest over ``raw_layers`` ((uncompressed tar, compression) each); its descriptor."""
        layers, diff_ids = [], []
        for raw, how in raw_layers:
            digest = sha(raw)
            if (digest, how) not in self._compressed:  # the same layer in several images: compressed once
                self._compressed[digest, how] = self.blob(compress(raw, how))
            layers.append({"mediaType": LAYER_TYPES[how], **self._compressed[digest, how]})
            diff_ids.append(digest)
        settings: dict[str, object] = {"Env": [f"PATH={path}", *env], "Entrypoint": entrypoint,
                                       "Cmd": cmd or ["/bin/sh"], "ExposedPorts": {"8080/tcp": {}}}
        if user is not None:
            settings["User"] = user
        if workdir is not None:
            settings["WorkingDir"] = workdir
        config = {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids},
                  "config": settings}
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, **self.blob(json.dumps(config).encode())},
                    "layers": layers}
        return {"mediaType": OCI_MANIFEST, **self.blob(json.dumps(manifest).encode()),
                "platform": {"os": "linux", "architecture": arch}}

    def tag(self, tag: str, descriptor: dict[str, object]) -> str:
        entry = {**descriptor, "annotations": {"org.opencontainers.image.ref.name": tag}}
        entry.pop("platform", None) if descriptor["mediaType"] == OCI_INDEX else None
        self.index = [e for e in self.index
                      if e.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag]  # type: ignore[union-attr]
        self.index.append(entry)
        (self.root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": self.index}))
        return str(descriptor["digest"])

    def multi_arch(self, manifests: list[dict[str, object]]) -> dict[str, object]:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        return {"mediaType": OCI_INDEX, **self.blob(json.dumps(index).encode())}
