"""Pulling images, side by side in one run (rounds interleaved; medians).

    (a) cold pull by sandpit: a fresh store, ``ImageStore.pull`` of a ~100 MB three-layer gzip image
        from a loopback registry: manifest, config, download, digests, unpacking, shell lookup
    (b) ``skopeo copy`` of the same image into an OCI layout (download and digests only, no unpacking)
    (b2) (b) and then GNU ``tar -xzf`` of each layer into a directory of its own: what the same work
        costs with the standard tools (no whiteout mapping, no path checks)
    (c) ``docker pull`` of the same image from the same registry: a dockerd the bench starts for
        itself, a fresh one each round (its own data-root, exec-root and socket under /tmp, the
        registry in its insecure-registries, no bridge, no iptables rules; stopped by pid, removed
        at the end) (``--no-docker`` leaves it out)

Nothing a round writes is removed before the last round has run, and each measure starts after a
``sync``: on an ext4 without a journal (these machines') the kernel skips inodes freed in the last
minute when it allocates new ones, so a tree of 7,000 files deleted just before a pull made that
pull's file creations up to twice as slow (``recently_deleted`` in the kernel's profile). Removing
between rounds had each tool pay for whatever the one before it deleted; now none does. The order
of the three rotates from round to round.

    (d) warm start of a job on the pulled image: ``Engine.run`` of /bin/true, image in the store
    (e) the same on the recipe image ``debian``

Usage (root): .venv/bin/python bench/bench_pull.py [--rounds 5] [--starts 30] [--no-docker]
Goals: (a) at or below (c); (d) the same as (e). Everything stays on 127.0.0.1: the registry is
Debian's docker-registry on a free port with its storage in a temporary directory, stopped by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.dockerd import PrivateDocker  # noqa: E402
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


def run_rounds(rounds: int, work: Path, reg: Registry, ref: str, conf: Path, settings: Settings,
               docker_dir: Path | None, times: dict[str, list[float]], notes: dict[str, str]) -> None:
    """The cold pulls, round by round, the order of the three rotating: sandpit, skopeo copy (and
    tar), docker pull (a fresh dockerd each round); each starts after a ``sync``, and everything
    stays on disk until the caller removes ``work`` (see the module's note on deleted inodes)."""

    def sandpit(round_: int) -> None:
        store = ImageStore(work / f"state-{round_}", REPO_IMAGES, registry=RegistryConfig(
            allowed=(reg.host,), registries_conf=conf, pull_dir=settings.state_dir))
        os.sync()
        t = time.perf_counter()
        store.pull(ref)
        times["sandpit"].append(time.perf_counter() - t)

    def skopeo(round_: int) -> None:
        out = work / f"copy-{round_}"
        os.sync()
        t = time.perf_counter()
        subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
                        f"docker://{ref}", f"oci:{out}"], check=True, env=SKOPEO_ENV)
        times["copy"].append(time.perf_counter() - t)
        manifest = json.loads((out / "blobs" / "sha256" / json.loads((out / "index.json").read_text())[
            "manifests"][0]["digest"][7:]).read_text())
        for n, layer in enumerate(manifest["layers"]):
            (out / f"layer{n}").mkdir()
            blob = out / "blobs" / "sha256" / layer["digest"][7:]
            subprocess.run(["tar", "--numeric-owner", "-xzf", str(blob), "-C", str(out / f"layer{n}")], check=True)
        times["copy_tar"].append(time.perf_counter() - t)

    def docker(round_: int) -> None:
        assert docker_dir is not None
        try:
            dockerd = PrivateDocker(docker_dir / f"round-{round_}", insecure_registry=reg.host)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            notes["docker"] = f"unavailable: {exc}"
            return
        try:
            notes["docker"] = f"dockerd {dockerd.storage_driver()}, a fresh data-root each round"
            os.sync()
            t = time.perf_counter()
            dockerd.docker("pull", "-q", ref)
            times["docker"].append(time.perf_counter() - t)
        finally:
            dockerd.stop()

    steps = [sandpit, skopeo] + ([docker] if docker_dir is not None else [])
    for round_ in range(rounds):
        for step in steps[round_ % len(steps):] + steps[:round_ % len(steps)]:
            step(round_)
        print(f"round {round_ + 1}: sandpit {times['sandpit'][-1]:.2f} s, skopeo copy {times['copy'][-1]:.2f} s, "
              f"skopeo copy + tar -x {times['copy_tar'][-1]:.2f} s"
              + (f", docker pull {times['docker'][-1]:.2f} s" if times["docker"] else ""), flush=True)


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms" if values else "not measured"


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def p90_ms(values: list[float]) -> str:
    return f"{p90(values) * 1000:.0f} ms" if values else "-"


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
            times: dict[str, list[float]] = {"sandpit": [], "copy": [], "copy_tar": [], "docker": []}
            notes = {"docker": "left out (--no-docker)"}
            docker_dir = None if args.no_docker else Path(tempfile.mkdtemp(prefix="sandpit-bench-docker-",
                                                                            dir="/tmp"))
            try:
                run_rounds(args.rounds, work, reg, ref, conf, settings, docker_dir, times, notes)
            finally:
                if docker_dir is not None:
                    shutil.rmtree(docker_dir, ignore_errors=True)
            print(f"(a) cold pull, sandpit (download + verify + unpack): {median_ms(times['sandpit'])}"
                  f" (p90 {p90_ms(times['sandpit'])})")
            print(f"(b) skopeo copy to an OCI layout (download + verify):  {median_ms(times['copy'])}")
            print(f"(b2) skopeo copy, then tar -xzf of each layer:        {median_ms(times['copy_tar'])}"
                  f" (p90 {p90_ms(times['copy_tar'])})")
            print(f"(c) docker pull ({notes['docker']}): {median_ms(times['docker'])}"
                  f" (p90 {p90_ms(times['docker'])})")
            if times["docker"]:
                print(f"(a)/(c): {statistics.median(times['sandpit']) / statistics.median(times['docker']):.2f}")

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
