"""A dockerd of a bench's own, for side-by-side figures against ``docker`` (bench_exec, bench_pull).

Its config file, data-root, exec-root, pidfile and socket live in a directory the bench names
(under /tmp), so the host's own Docker, if any, is not touched; no bridge, no iptables changes;
a loopback registry may be named insecure. The host's /etc/docker/daemon.json is not read: it
may set the same options as flags, which dockerd refuses. ``stop`` ends the daemon by its pid and
unmounts what it left mounted, keeping its files; ``close`` also removes the directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path


class PrivateDocker:
    def __init__(self, home: Path, *, insecure_registry: str | None = None) -> None:
        if shutil.which("dockerd") is None:
            raise RuntimeError("dockerd is not installed (apt-get install docker.io)")
        self.dir = home
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = f"unix://{self.dir}/docker.sock"
        (self.dir / "daemon.json").write_text("{}")
        self.log = open(self.dir / "dockerd.log", "wb")
        registry = ["--insecure-registry", insecure_registry] if insecure_registry else []
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            ["dockerd", "--config-file", str(self.dir / "daemon.json"), "--data-root", str(self.dir / "data"),
             "--exec-root", str(self.dir / "exec"), "--pidfile", str(self.dir / "docker.pid"), "-H", self.socket,
             "--bridge=none", "--iptables=false", "--ip6tables=false", *registry, "--storage-driver", "overlay2"],
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
        return str(json.loads(self.docker("info", "--format", "{{json .Driver}}").stdout))

    def stop(self) -> None:
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
        # whatever dockerd left mounted under its directory goes with it
        points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if line.split()[4].startswith(str(self.dir) + "/")]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
