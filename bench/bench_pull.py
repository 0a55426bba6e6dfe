"""Pulling images, side by side in one run (rounds interleaved; medians).

    (a) cold pull by sandpit: a fresh store, ``ImageStore.pull`` of a ~100 MB three-layer gzip image
        from a loopback registry: manifest, config, download, digests, unpacking, shell lookup
    (b) ``skopeo copy`` of the same image into an OCI layout (download and digests only, no unpacking)
    (b2) (b) and then GNU ``tar -xzf`` of each layer into a directory of its own: what the same work
        costs with the standard tools (no whiteout mapping, no path checks)
    (c) ``docker pull`` of the same image from the same registry: a dockerd the bench starts for
        itself (its own data-root, exec-root and socket under /tmp, the registry in its
        insecure-registries, no bridge, no iptables rules; stopped by pid and removed at the end),
        the image removed between rounds (``--no-docker`` leaves it out)

    (d) warm start of a job on the pulled image: ``Engine.run`` of /bin/true, image in the store
    (e) the same on the recipe image ``debian``

Usage (root): .venv/bin/python bench/bench_pull.py [--rounds 5] [--starts 30] [--no-docker]
Goals: (a) at or below (c); (d) the same as (e). Everything stays on 127.0.0.1: the registry is
Debian's docker-registry on a free port with its storage in a temporary directory, stopped by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipelines.record import replace  # noqa: E402
from tests.sandbox.images.layers import member, tar_bytes  # noqa: E402
from tests.sandbox.images.registry import SKOPEO_ENV, Layout, Registry  # noqa: E402
from worker.sandbox.engine import Engine  # noqa: E402
from worker.sandbox.images import ImageStore  # noqa: E402
from worker.sandbox.registry.config import RegistryConfig  # noqa: E402
from worker.sandbox.request import SandboxRequest  # noqa: E402
from worker.settings import REPO_IMAGES, Settings  # noqa: E402


def image_layers(settings: Settings) -> list[tuple[bytes, str]]:
    """Debian's rootfs (about 55 MB of gzip), then two layers of incompressible files (30 + 15 MB)."""
    rootfs = ImageStore(settings.state_dir, settings.images_dir).get("debian").rootfs
    debian = subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", "-", "."], check=True,
                            capture_output=True).stdout
    noise = [member(f"opt/data/blob{i}", os.urandom(5 << 20)) for i in range(6)]
    more = [member("opt/data/.wh.blob0"), *(member(f"srv/more{i}", os.urandom(5 << 20)) for i in range(3))]
    return [(debian, "gzip"), (tar_bytes(noise), "gzip"), (tar_bytes(more), "gzip")]


class PrivateDocker:
    """A dockerd of the bench's own: data-root, exec-root, pidfile and socket in a temporary directory
    under /tmp (the host's own Docker, if any, is not touched), the loopback registry insecure."""

    def __init__(self, registry: str) -> None:
        if shutil.which("dockerd") is None:
            raise RuntimeError("dockerd is not installed (apt-get install docker.io)")
        self.dir = Path(tempfile.mkdtemp(prefix="sandpit-bench-docker-", dir="/tmp"))
        self.socket = f"unix://{self.dir}/docker.sock"
        (self.dir / "daemon.json").write_text("{}")
        self.log = open(self.dir / "dockerd.log", "wb")
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            ["dockerd", "--config-file", str(self.dir / "daemon.json"), "--data-root", str(self.dir / "data"),
             "--exec-root", str(self.dir / "exec"), "--pidfile", str(self.dir / "docker.pid"), "-H", self.socket,
             "--bridge=none", "--iptables=false", "--ip6tables=false", "--insecure-registry", registry,
             "--storage-driver", "overlay2"],
            stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL, start_new_session=True)
        for _ in range(150):
            if self.docker("info", check=False).returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = (self.dir / "dockerd.log").read_text(errors="replace")[-1500:]
        self.close()
        raise RuntimeError(f"dockerd did not start: {tail}")

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["docker", "-H", self.socket, *args], capture_output=True, check=check,
                              stdin=subprocess.DEVNULL)

    def storage_driver(self) -> str:
        return json.loads(self.docker("info", "--format", "{{json .Driver}}").stdout)

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
            self.proc = None
            self.log.close()
        # whatever dockerd left mounted under its directory goes before the directory itself
        points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if line.split()[4].startswith(str(self.dir) + "/")]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_rounds(rounds: int, work: Path, reg: Registry, ref: str, conf: Path, settings: Settings,
               dockerd: PrivateDocker | None, cold: list[float], copy: list[float], copy_tar: list[float],
               docker: list[float]) -> None:
    """The cold pulls, interleaved round by round: sandpit, skopeo copy (and tar), docker pull; each
    starts after what the one before wrote or removed is on disk (``sync``), so none pays for another."""
    for round_ in range(rounds):
        os.sync()
        state = work / f"state-{round_}"
        store = ImageStore(state, REPO_IMAGES, registry=RegistryConfig(
            allowed=(reg.host,), registries_conf=conf, pull_dir=settings.state_dir))
        t = time.perf_counter()
        store.pull(ref)
        cold.append(time.perf_counter() - t)
        shutil.rmtree(state)
        out = work / f"copy-{round_}"
        os.sync()
        t = time.perf_counter()
        subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
                        f"docker://{ref}", f"oci:{out}"], check=True, env=SKOPEO_ENV)
        copy.append(time.perf_counter() - t)
        manifest = json.loads((out / "blobs" / "sha256" / json.loads((out / "index.json").read_text())[
            "manifests"][0]["digest"][7:]).read_text())
        for n, layer in enumerate(manifest["layers"]):
            (out / f"layer{n}").mkdir()
            blob = out / "blobs" / "sha256" / layer["digest"][7:]
            subprocess.run(["tar", "--numeric-owner", "-xzf", str(blob), "-C", str(out / f"layer{n}")], check=True)
        copy_tar.append(time.perf_counter() - t)
        shutil.rmtree(out)
        if dockerd is not None:
            os.sync()
            t = time.perf_counter()
            dockerd.docker("pull", "-q", ref)
            docker.append(time.perf_counter() - t)
            dockerd.docker("rmi", "-f", ref)  # and its layers: the next round's pull is cold again
        print(f"round {round_ + 1}: sandpit {cold[-1]:.2f} s, skopeo copy {copy[-1]:.2f} s, "
              f"skopeo copy + tar -x {copy_tar[-1]:.2f} s"
              + (f", docker pull {docker[-1]:.2f} s" if dockerd is not None else ""), flush=True)


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms" if values else "not measured"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--starts", type=int, default=30)
    ap.add_argument("--no-docker", action="store_true", help="leave docker pull out")
    args = ap.parse_args()
    settings = Settings.from_env(os.environ)
    # under the state dir: the store's filesystem (on these machines /tmp is the same ext4, but need not be)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".bench-pull-", dir=settings.state_dir))
    try:
        layout = Layout(work / "layout")
        layout.tag("1", layout.image(image_layers(settings)))
        size = sum(p.stat().st_size for p in (work / "layout" / "blobs" / "sha256").iterdir())
        with Registry(work / "registry") as reg:
            reg.push(layout.root, "1", "bench/image:1")
            ref = f"{reg.host}/bench/image:1"
            conf = reg.registries_conf(work / "registries.conf")
            print(f"image {ref}: 3 layers, {size / 1e6:.0f} MB compressed", flush=True)
            cold: list[float] = []
            copy: list[float] = []
            copy_tar: list[float] = []
            docker: list[float] = []
            engine_note = "left out (--no-docker)"
            with contextlib.ExitStack() as stack:
                dockerd = None
                if not args.no_docker:
                    try:
                        dockerd = PrivateDocker(reg.host)
                        stack.callback(dockerd.close)
                        engine_note = f"dockerd {dockerd.storage_driver()}"
                    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                        engine_note = f"unavailable: {exc}"
                run_rounds(args.rounds, work, reg, ref, conf, settings, dockerd, cold, copy, copy_tar, docker)
            print(f"(a) cold pull, sandpit (download + verify + unpack): {median_ms(cold)}")
            print(f"(b) skopeo copy to an OCI layout (download + verify):  {median_ms(copy)}")
            print(f"(b2) skopeo copy, then tar -xzf of each layer:        {median_ms(copy_tar)}")
            print(f"(c) docker pull ({engine_note}): {median_ms(docker)}")

            # warm starts: the pulled image in the real store, beside the recipe image
            local = replace(settings, registries=(reg.host,), registries_conf=conf)
            engine = Engine(local)
            engine.images.pull(ref)
            pulled: list[float] = []
            recipe: list[float] = []
            try:
                for i in range(args.starts + 2):
                    for image, into in ((ref, pulled), ("debian", recipe)) if i % 2 else (
                            ("debian", recipe), (ref, pulled)):
                        t = time.perf_counter()
                        result = engine.run(SandboxRequest(argv=("/bin/true",), image=image))
                        took = time.perf_counter() - t
                        if result.status != "succeeded":
                            raise SystemExit(f"job on {image} did not succeed: {result.message}")
                        if i >= 2:  # the first two rounds make the layer views
                            into.append(took)
                print(f"(d) warm start, pulled image (3 layers):  {median_ms(pulled)}")
                print(f"(e) warm start, recipe image debian:      {median_ms(recipe)}")
            finally:
                from pipelines.references import parse_reference
                from worker.sandbox.registry.naming import canonical
                from worker.sandbox.rootfs import drop_layer_views

                stored = engine.images.get(ref, policy="never")
                for key, _path in stored.layer_stack():
                    drop_layer_views(settings.run_dir, key)
                engine.images.pulled.remove_name(canonical(parse_reference(ref)))
                engine.images.prune(max_bytes=0, grace_s=0)
                engine.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
