"""Start-up cost of one job, side by side in one run (rounds interleaved; medians).

    (a) `sandpit exec -- /bin/true` as a whole process
    (b) the engine's own time for the same job (Engine.run in a warm process)
    (c) bare `crun run` of a prepared bundle: the same config.json and rootfs the engine makes,
        run as a user would run it (`crun` from PATH, which clones itself on every run; the engine
        starts it from a read-only view instead: worker/sandbox/runtime.py)
    (d) `docker run --rm --network none` of the same rootfs (with --docker; starts dockerd itself)

    (e) the engine with `--network egress`, (f) `sandpit exec --network egress` (with --network)
    (g) `sandpit exec -- /bin/true` as a whole process, served by a resident engine (`sandpit engine`,
        which the bench starts with --resident; its CPU counted with the client's). (a) always runs
        with SANDPIT_RESIDENT=off, so it stays the in-process command.

    --egress-vs-none N: afterwards, N more jobs each of (a) and (f), interleaved (which one goes first
    alternates), with the pool of ready egress namespaces filled first and drained at the end; prints
    both medians and what egress adds to a whole `sandpit exec` process

Usage (root): .venv/bin/python bench/bench_exec.py [--runs 30] [--docker] [--network] [--egress-vs-none 200]
                                                 [--resident]
Goals (issue 18): (b) <= 1.15 x (c); (a) or, with a resident engine, (g) <= 0.15 x (d); egress adds
<= 8 ms over none (whole process: (f) - (a)). The machine is shared and noisy: run it several
times, alternated with a baseline tree's copy of this file, and compare medians and p90 within one
sitting.
With --network, sandpit's bridge and rules live in a namespace the bench makes (`ip netns add
sandpit-bench`, deleted at the end), which has no uplink: nothing can leave it.
"""

from __future__ import annotations

import argparse
import contextlib
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
from pipelines.files.locks import try_hold  # noqa: E402
from worker.sandbox import spec as oci  # noqa: E402
from worker.sandbox.cgroups import JobCgroup  # noqa: E402
from worker.sandbox.disk import JobDisk  # noqa: E402
from worker.sandbox.engine import Engine, _nofile  # noqa: E402
from worker.sandbox.leases import write_owner  # noqa: E402
from worker.sandbox.request import SandboxRequest  # noqa: E402
from worker.sandbox.rootfs import JobRootfs  # noqa: E402
from worker.settings import Settings  # noqa: E402

SANDPIT = str(REPO / ".venv" / "bin" / "sandpit")


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cpu_now() -> float:
    """CPU seconds of this process and of its waited-for descendants (crun, a whole sandpit
    process and its crun): a load-robust companion to wall time on a shared machine. dockerd is no
    descendant, so (d) has none."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class BareBundle:
    """A bundle prepared exactly as the engine would, run again and again by crun itself."""

    def __init__(self, engine: Engine) -> None:
        s = engine.settings
        image = engine.images.get("debian")
        # held like a job's owner lease, so reapers and other tests' leftover checks see a live job
        s.locks_dir.mkdir(parents=True, exist_ok=True)
        self.owner = try_hold(s.locks_dir / "job-bench-bare.lock")
        if self.owner is None:
            raise RuntimeError("another bench_exec is running (its bench-bare lease is held)")
        write_owner(self.owner)
        self.dir = s.jobs_dir / "bench-bare"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.disk = JobDisk(engine.scratch(), "bench-bare", 1 << 30)
        self.cg = JobCgroup("bench-bare", memory_bytes=256 << 20, cpus=1, pids=128)
        uid_base = s.uid_base + (s.uid_slots - 1) * oci.ID_RANGE
        self.rootfs = JobRootfs(self.dir, [(image.key, image.rootfs)], self.disk.path, uid_base,
                                oci.ID_RANGE, s.run_dir)
        config = oci.build_spec(oci.SpecInputs(
            request=SandboxRequest(argv=("/bin/true",)), rootfs=str(self.rootfs.path),
            workspace=str(self.rootfs.workspace), uid_base=uid_base, cgroups_path=self.cg.runtime_path,
            seccomp=oci.load_seccomp(), image_env=image.env, nofile=_nofile()))
        (self.dir / "config.json").write_text(json.dumps(config))
        self.state = Path(tempfile.mkdtemp(prefix="sandpit-bench-crun-"))
        self.n = 0

    def run(self) -> None:
        self.n += 1
        subprocess.run(["crun", f"--root={self.state}", "run", "--bundle", str(self.dir), f"bare{self.n}"],
                       stdin=subprocess.DEVNULL, check=True)

    def close(self) -> None:
        self.rootfs.close()
        self.cg.close()
        self.disk.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.state, ignore_errors=True)
        self.owner.release()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.owner.path)


class Docker(PrivateDocker):
    """The bench's own dockerd (:mod:`bench.dockerd`) holding the engine's rootfs as an image."""

    def __init__(self, rootfs: Path) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="sandpit-bench-docker-", dir="/tmp")))
        try:
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            subprocess.run(["docker", "-H", self.socket, "import", "-", "sandpit-bench-debian"], stdin=tar.stdout,
                           check=True, capture_output=True)
            tar.wait()
        except BaseException:
            self.close()
            raise

    def run(self) -> None:
        subprocess.run(["docker", "-H", self.socket, "run", "--rm", "--network", "none", "sandpit-bench-debian",
                        "/bin/true"], check=True, stdin=subprocess.DEVNULL)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.docker("rmi", "-f", "sandpit-bench-debian", check=False)
        super().close()


class Resident:
    """A `sandpit engine` the bench starts (and stops, by its pid) for case (g)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([SANDPIT, "engine"], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if "serving sandpit exec" not in line:
            self.close()
            raise RuntimeError(f"sandpit engine did not start: {line.strip()}")

    def cpu(self) -> float:
        """The engine's CPU seconds and its waited-for children's (crun and the jobs)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=60)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--docker", action="store_true")
    ap.add_argument("--runtime", default=None)
    ap.add_argument("--network", action="store_true")
    ap.add_argument("--resident", action="store_true", help="also (g): exec served by a resident engine")
    ap.add_argument("--egress-vs-none", type=int, default=0, metavar="N",
                    help="N interleaved whole-process jobs each of --network none and egress (implies --network)")
    args = ap.parse_args()
    args.network = args.network or args.egress_vs_none > 0
    settings = Settings.from_env(os.environ)
    engine = Engine(settings)
    req = SandboxRequest(argv=("/bin/true",), runtime=args.runtime)
    env = {**os.environ, "SANDPIT_RUNTIME": args.runtime or ""}
    in_process = {**env, "SANDPIT_RESIDENT": "off"}

    def cli() -> None:
        subprocess.run([SANDPIT, "exec", "--", "/bin/true"], check=True, env=in_process)

    def cli_resident() -> None:
        subprocess.run([SANDPIT, "exec", "--", "/bin/true"], check=True, env=env)

    def eng() -> None:
        assert engine.run(req).status == "succeeded"

    bare = BareBundle(engine)
    netns = None
    if args.network:
        from pipelines.record import replace

        netns = Path("/run/netns/sandpit-bench")
        subprocess.run(["ip", "netns", "add", "sandpit-bench"], check=True)
        net_settings = replace(settings, net_host_netns=netns)
        net_engine = Engine(net_settings)
        net_env = {**env, "SANDPIT_NET_HOST_NETNS": str(netns)}
        egress_req = SandboxRequest(argv=("/bin/true",), runtime=args.runtime, network="egress")

        def eng_egress() -> None:
            assert net_engine.run(egress_req).status == "succeeded"

        def cli_egress() -> None:
            subprocess.run([SANDPIT, "exec", "--network", "egress", "--", "/bin/true"], check=True,
                           env={**net_env, "SANDPIT_RESIDENT": "off"})

    docker = None
    docker_note = "not run (pass --docker)"
    if args.docker:
        try:
            docker = Docker(engine.images.get("debian").rootfs)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            docker_note = f"unavailable: {exc}"
    resident = Resident(env) if args.resident else None
    cases = {"(a) sandpit exec, whole process": cli, "(b) engine only": eng, "(c) bare crun run": bare.run}
    if docker is not None:
        cases["(d) docker run --rm --network none"] = docker.run
    if netns is not None:
        cases["(e) engine only, --network egress"] = eng_egress
        cases["(f) sandpit exec --network egress"] = cli_egress
    if resident is not None:
        cases["(g) sandpit exec, resident engine"] = cli_resident
    times: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    pair_times: dict[str, list[float]] = {}
    try:
        for fn in cases.values():  # warm up
            fn()
        for _ in range(args.runs):
            for name, fn in cases.items():
                before = cpu_now() + (resident.cpu() if name.startswith("(g)") and resident else 0.0)
                times[name].append(timed(fn))
                after = cpu_now() + (resident.cpu() if name.startswith("(g)") and resident else 0.0)
                cpu[name].append(after - before)
        if args.egress_vs_none:
            pair_times = egress_vs_none(args.egress_vs_none, net_settings, cli, cli_egress)
    finally:
        bare.close()
        if resident is not None:
            resident.close()
        if docker is not None:
            docker.close()
        if netns is not None:
            net_engine.close()
            drain_bench_pool(net_settings)
            from worker.sandbox.network.lifecycle import teardown_host

            teardown_host(net_settings.network())  # bridge, tables, pool and the DNS forwarder, by pid
            subprocess.run(["ip", "netns", "del", "sandpit-bench"], check=False)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"\n{args.runs} rounds, interleaved; runtime {engine.runtime(args.runtime).name}\n")
    print("| case | median ms | p90 ms | CPU median ms |")
    print("|---|---:|---:|---:|")
    for k, v in times.items():
        p90 = sorted(v)[int(0.9 * (len(v) - 1))] * 1000
        used = "—" if k.startswith("(d)") else f"{statistics.median(cpu[k]) * 1000:.1f}"
        print(f"| {k} | {med[k]:.1f} | {p90:.1f} | {used} |")
    b_over_c = med["(b) engine only"] / med["(c) bare crun run"]
    print(f"\n(b)/(c) = {b_over_c:.2f} (goal <= 1.15)")
    e = med.get("(e) engine only, --network egress")
    if e:
        print(f"egress adds {e - med['(b) engine only']:.1f} ms to a job over none (goal <= 8)")
    d = med.get("(d) docker run --rm --network none")
    if d:
        print(f"(a)/(d) = {med['(a) sandpit exec, whole process'] / d:.3f} (goal <= 0.15)")
        g = med.get("(g) sandpit exec, resident engine")
        if g:
            print(f"(g)/(d) = {g / d:.3f} (goal <= 0.15)")
    else:
        print(f"(d) docker: {docker_note}")
    if pair_times:
        print_egress_vs_none(pair_times)
    return 0


TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from worker.sandbox.network.pool.layout import PoolRequest
    from worker.sandbox.network.settings import NetworkSettings


def bench_pool_settings(settings: Settings) -> tuple[NetworkSettings, PoolRequest]:
    """The network settings a `sandpit exec` process with ``settings`` claims its pool entries for."""
    from worker.sandbox.network.pool.claim import pool_request
    from worker.sandbox.network.pool.fill import settings_from_request

    request = pool_request(settings)
    if request is None:
        raise RuntimeError("the pool of egress namespaces is off (SANDPIT_NET_POOL=0)")
    return settings_from_request(json.loads(request.as_args())), request


def egress_vs_none(jobs: int, settings: Settings, cli: Callable[[], None],
                   cli_egress: Callable[[], None]) -> dict[str, list[float]]:
    """``jobs`` whole-process jobs each of `--network none` and `--network egress`, interleaved,
    the pool filled first (as `sandpit host-prep` or an earlier job would)."""
    from worker.sandbox.network.pool.fill import fill_pool

    pool_settings, request = bench_pool_settings(settings)
    fill_pool(pool_settings, config=request.config)
    found: dict[str, list[float]] = {"none": [], "egress": []}
    for i in range(jobs):
        pair = [("none", cli), ("egress", cli_egress)]
        for name, fn in pair if i % 2 == 0 else reversed(pair):
            found[name].append(timed(fn))
    return found


def drain_bench_pool(settings: Settings) -> None:
    from worker.sandbox.network.pool.fill import drain_pool

    try:
        pool_settings, _ = bench_pool_settings(settings)
    except RuntimeError:
        return
    drain_pool(pool_settings)


def print_egress_vs_none(found: dict[str, list[float]]) -> None:
    none, egress = (statistics.median(found[k]) * 1000 for k in ("none", "egress"))
    print(f"\nwhole process, {len(found['none'])} + {len(found['egress'])} jobs interleaved (pool on):\n")
    print("| case | median ms | p90 ms |")
    print("|---|---:|---:|")
    for name, label in (("none", "`sandpit exec --network none -- /bin/true`"),
                        ("egress", "`sandpit exec --network egress -- /bin/true`")):
        p90 = sorted(found[name])[int(0.9 * (len(found[name]) - 1))] * 1000
        print(f"| {label} | {statistics.median(found[name]) * 1000:.1f} | {p90:.1f} |")
    print(f"\negress adds {egress - none:.1f} ms to a whole process over none (goal <= 8); "
          f"ratio {egress / none:.3f}")


if __name__ == "__main__":
    sys.exit(main())
