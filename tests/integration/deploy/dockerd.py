"""A Docker engine of the test's own, that can send nothing off this machine.

Debian's ``dockerd`` is started in a network namespace made for it, whose only link is a veth to
the host with a /30 between the two ends and no route beyond: whatever route a container is given
(Docker hands containers on an ``internal: true`` network a default route all the same, and
without its iptables rules nothing else stops them), a packet for anywhere but that /30 has
nowhere to go. ``--iptables=false`` keeps it off the host's firewall (which sandpit's own egress
policy shares), ``--bridge=none`` makes no default bridge, and ``--ip-forward=false`` leaves the
namespace's forwarding off, so containers cannot reach the host either: only the host reaches
the ports they publish on the namespace's end of the veth.

Everything lives under a temporary root (data-root, exec-root, socket, pid file) and a cgroup
parent of its own; :func:`isolated_dockerd` stops the daemon by its pid, unmounts what is left
under the root, removes it, its cgroups and the namespace (and with it the veth).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DOCKER = "/usr/bin/docker"  # Debian's docker.io, whatever else PATH holds
COMPOSE = "/usr/bin/docker-compose"
DOCKERD = "/usr/sbin/dockerd"
LINKS = ipaddress.IPv4Network("10.231.0.0/16")  # the veths' /30s: no sandpit subnet, no uplink's
ADDRESS_POOL = "base=172.31.0.0/16,size=24"  # inside the namespace only


@dataclass(frozen=True)
class Dockerd:
    root: Path
    namespace: str
    cgroup_parent: str
    address: str  # where the host reaches ports the containers publish

    @property
    def env(self) -> dict[str, str]:
        return {"PATH": os.environ["PATH"], "DOCKER_HOST": f"unix://{self.root}/docker.sock",
                "COMPOSE_DOCKER_CLI_BUILD": "0", "DOCKER_BUILDKIT": "0", "HOME": str(self.root)}

    def docker(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([DOCKER, *args], env=self.env, timeout=timeout, check=check)


def missing() -> str | None:
    for tool in (DOCKER, COMPOSE, DOCKERD, shutil.which("nsenter") or "/usr/bin/nsenter"):
        if not os.access(tool, os.X_OK):
            return f"needs {tool} (apt-get install docker.io docker-compose)"
    return None


def _run(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 60,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return proc


def free_link() -> tuple[str, str]:
    """(host end, engine end) of a /30 in LINKS that no address or route of the host overlaps (two
    of these engines may run at once: each gets its own)."""
    taken = [ipaddress.ip_network(r["dst"], strict=False) for r in json.loads(_run(["ip", "-j", "-4", "route"]).stdout)
             if r.get("dst") not in (None, "default")]
    for _try in range(64):
        link = list(LINKS.subnets(new_prefix=30))[secrets.randbelow(2**14)]
        if not any(link.overlaps(t) for t in taken):
            host, engine = list(link.hosts())
            return str(host), str(engine)
    raise RuntimeError(f"no free /30 in {LINKS}")


@contextlib.contextmanager
def isolated_dockerd(root: Path) -> Iterator[Dockerd]:
    tag = secrets.token_hex(3)
    namespace, host_end, engine_end = f"sandpit-compose-{tag}", f"spc{tag}h", f"spc{tag}n"
    host_address, engine_address = free_link()
    engine = Dockerd(root, namespace, f"/spcompose-{tag}", engine_address)
    root.mkdir(parents=True, exist_ok=True)
    proc: subprocess.Popen[bytes] | None = None
    try:
        _run(["ip", "netns", "add", namespace])
        _run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", engine_end, "netns", namespace])
        _run(["ip", "addr", "add", f"{host_address}/30", "dev", host_end])
        _run(["ip", "link", "set", host_end, "up"])
        for argv in (["addr", "add", f"{engine_address}/30", "dev", engine_end], ["link", "set", engine_end, "up"],
                     ["link", "set", "lo", "up"]):
            _run(["ip", "-n", namespace, *argv])
        # a configuration of its own: the host's /etc/docker/daemon.json (.ci/setup writes one with these
        # same settings for the system dockerd) would be read too, and dockerd refuses a setting given twice
        (root / "daemon.json").write_text("{}\n")
        with open(root / "dockerd.log", "wb") as log:
            proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{namespace}", "--", DOCKERD, "--config-file", str(root / "daemon.json"),
                 "--data-root", str(root / "data"),
                 "--exec-root", str(root / "exec"), "--pidfile", str(root / "dockerd.pid"),
                 "-H", f"unix://{root}/docker.sock", "--bridge=none", "--iptables=false", "--ip6tables=false",
                 "--ip-masq=false", "--ip-forward=false", "--default-address-pool", ADDRESS_POOL,
                 "--cgroup-parent", engine.cgroup_parent, "--log-level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while engine.docker("info", "--format", "{{.ServerVersion}}", check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dockerd did not start:\n" + (root / "dockerd.log").read_text()[-3000:])
            time.sleep(0.2)
        yield engine
    finally:
        if proc is not None:
            _stop(proc)
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)
        _remove_cgroups(engine.cgroup_parent)
        subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, check=False)
        subprocess.run(["ip", "link", "delete", host_end], capture_output=True, check=False)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # dockerd stops its containers and its containerd
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


def _unmount_under(root: Path) -> None:
    for point in sorted(mounts_under(root), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def cgroups_of(parent: str) -> list[Path]:
    base = Path("/sys/fs/cgroup")
    name = parent.strip("/")
    return [p for p in [base / name, *base.glob(f"*/{name}")] if p.is_dir()]


def _remove_cgroups(parent: str) -> None:
    """Remove the engine's cgroup trees, deepest first (a cgroup dir is removed with rmdir)."""
    for top in cgroups_of(parent):
        for here, _dirs, _files in sorted(os.walk(top), key=lambda w: len(w[0]), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(here)
