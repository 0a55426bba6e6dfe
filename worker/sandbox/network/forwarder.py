"""The jobs' DNS forwarder: one ``dnsmasq`` per instance bridge, listening on the bridge's gateway
address only and forwarding to the host's own resolvers (as Docker's embedded DNS does).

Why a forwarder: the host's resolvers are usually on a private or loopback address (systemd-resolved's
127.0.0.53, a cloud VPC resolver), which the egress policy must keep from jobs; the forwarder runs in
the host's network namespace, so it reaches them, and jobs only ever need the gateway's port 53.
Why dnsmasq (Debian's ``dnsmasq-base``: the binary without a system service that would listen on
every interface): a small, long-kept forwarder with a cache, which follows the host's resolv.conf when
DHCP or resolved rewrites it (``--resolv-file`` is polled), and reports start-up failures (address in
use) in its exit status before it daemonises. Writing our own forwarder would mean owning TCP
fallback, truncation and EDNS; unbound or systemd-resolved are heavier and not always there.

Life cycle: ``prepare_host`` starts it (``ensure_forwarder``) under the host lock when it is not
running or runs with other arguments; every egress set-up checks it is alive (``forwarder_alive``: a
pid file read and a ``/proc/<pid>/cmdline`` read, ≈20 µs) and restarts it from its recorded command
when it died (``revive_forwarder``); ``teardown_host`` stops it by its pid (``stop_forwarder``). The
pid file and the recorded command live under ``<run dir>/net/dns/<bridge>.{pid,json}``.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from worker.sandbox.network.errors import HostNetworkError
from worker.sandbox.network.leases import ReapLock
from worker.sandbox.network.namespace import open_netns, run_in_netns

DNSMASQ = "/usr/sbin/dnsmasq"
#: entries kept by the forwarder's cache (dnsmasq's default is 150; a busy CI host asks far more)
CACHE_SIZE = 1000


def dnsmasq_argv(*, listen: str, pid_file: str, resolv_file: str | None, servers: Sequence[str],
                 user: str, binary: str = DNSMASQ) -> list[str]:
    """The dnsmasq command of one bridge (pure). ``resolv_file``: forward to the nameservers of that
    file, re-read when it changes; else ``servers``. No config file, no /etc/hosts, no DHCP: only DNS
    on ``listen``, bound to that address alone (``--bind-interfaces``), never on loopback.

    >>> dnsmasq_argv(listen="10.213.0.1", pid_file="/run/d.pid", resolv_file=None, servers=["1.1.1.1"],
    ...              user="dnsmasq")[1:4]
    ['--conf-file=/dev/null', '--listen-address=10.213.0.1', '--bind-interfaces']
    """
    argv = [binary, "--conf-file=/dev/null", f"--listen-address={listen}", "--bind-interfaces",
            "--except-interface=lo", "--no-hosts", f"--cache-size={CACHE_SIZE}", f"--user={user}",
            "--group=nogroup", f"--pid-file={pid_file}"]
    if resolv_file is not None:
        argv.append(f"--resolv-file={resolv_file}")
    else:
        argv.append("--no-resolv")
        argv += [f"--server={server}" for server in servers]
    return argv


def dnsmasq_user() -> str:
    """dnsmasq-base's own system user, else nobody: the forwarder never keeps root."""
    try:
        pwd.getpwnam("dnsmasq")
    except KeyError:
        return "nobody"
    return "dnsmasq"


def have_dnsmasq(binary: str = DNSMASQ) -> bool:
    return os.access(binary, os.X_OK)


def pid_file_of(dns_dir: Path, bridge: str) -> Path:
    return dns_dir / f"{bridge}.pid"


def _read_pid(pid_file: str) -> int | None:
    try:
        with open(pid_file, "rb") as f:
            return int(f.read(32).strip() or b"0") or None
    except (OSError, ValueError):
        return None


def _is_ours(pid: int, pid_file: str) -> bool:
    """``pid`` is a live dnsmasq started with this pid file (not a recycled pid, not a zombie)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return False
    # a zombie has an empty cmdline: it counts as gone
    return bool(words) and words[0].endswith(b"dnsmasq") and f"--pid-file={pid_file}".encode() in words


def _exited(pid: int) -> bool:
    """``pid`` has released its sockets: gone or a zombie. (An empty cmdline is not enough: the
    kernel drops a dying task's memory before its files, so its port 53 is still bound then.)"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state in (b"Z", b"X")


def forwarder_pid(pid_file: str) -> int | None:
    """The pid of the running forwarder of ``pid_file``, None if it is not running."""
    pid = _read_pid(pid_file)
    return pid if pid is not None and _is_ours(pid, pid_file) else None


def forwarder_alive(pid_file: str) -> bool:
    return forwarder_pid(pid_file) is not None


def _record_path(pid_file: str) -> str:
    return pid_file[: -len(".pid")] + ".json" if pid_file.endswith(".pid") else pid_file + ".json"


def _start(argv: list[str], netns: str | None) -> None:
    """Run dnsmasq (it daemonises once its sockets are bound) in ``netns`` (None: this namespace)."""
    def spawn() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(argv, capture_output=True, timeout=30, check=False, stdin=subprocess.DEVNULL)

    ns_fd = open_netns(netns) if netns is not None else None
    try:
        done = run_in_netns(ns_fd, spawn)
        deadline = time.monotonic() + 3.0  # a forwarder that just died may still hold port 53
        while done.returncode != 0 and b"in use" in done.stderr and time.monotonic() < deadline:
            time.sleep(0.05)
            done = run_in_netns(ns_fd, spawn)
    except FileNotFoundError as exc:
        raise HostNetworkError(f"{argv[0]} is not installed (apt-get install dnsmasq-base)") from exc
    finally:
        if ns_fd is not None:
            os.close(ns_fd)
    if done.returncode != 0:
        message = (done.stderr or done.stdout).decode(errors="replace").strip()
        raise HostNetworkError(f"the jobs' DNS forwarder did not start (dnsmasq exit {done.returncode}): {message}")


def ensure_forwarder(argv: list[str], pid_file: str, netns: str | None) -> int:
    """Start the forwarder unless it already runs on the same address and namespace; the caller holds
    the host lock. A running one is kept even if its upstream differs: it follows the host's
    resolv.conf itself, and a detached pool refill (whose settings carry no upstream path) must not
    replace it. Returns its pid."""
    record = _record_path(pid_file)
    wanted = {"argv": argv, "netns": netns}
    pid = forwarder_pid(pid_file)
    if pid is not None:
        try:
            with open(record) as f:
                old = json.load(f)
            if old.get("netns") == netns and _listen(old.get("argv", [])) == _listen(argv):
                return pid
        except (OSError, ValueError, AttributeError):
            pass
        stop_forwarder(pid_file)
    os.makedirs(os.path.dirname(pid_file), mode=0o755, exist_ok=True)
    temp = f"{record}.{os.getpid()}"
    with open(temp, "w") as f:
        json.dump(wanted, f)
    os.replace(temp, record)
    _start(argv, netns)
    pid = forwarder_pid(pid_file)
    if pid is None:
        raise HostNetworkError(f"the jobs' DNS forwarder started but wrote no live pid to {pid_file}")
    return pid


def _listen(argv: list[str]) -> str | None:
    return next((word for word in argv if word.startswith("--listen-address=")), None)


def revive_forwarder(pid_file: str, lock: Path) -> None:
    """Restart a dead forwarder from its recorded command (a job's set-up found it gone), under
    ``lock`` (the host lock) so concurrent jobs start one, not several."""
    with ReapLock(lock):
        if forwarder_alive(pid_file):
            return
        try:
            with open(_record_path(pid_file)) as f:
                recorded = json.load(f)
        except (OSError, ValueError) as exc:
            raise HostNetworkError(f"the jobs' DNS forwarder is not running and its command "
                                   f"({_record_path(pid_file)}) is unreadable: {exc}") from exc
        argv = [str(word) for word in recorded.get("argv", [])]
        if not argv or argv[0] != DNSMASQ:  # the record is root's, but never run anything else
            raise HostNetworkError(f"refusing the recorded forwarder command in {_record_path(pid_file)}: {argv[:1]}")
        ensure_forwarder(argv, pid_file, recorded.get("netns"))


def stop_forwarder(pid_file: str, wait_s: float = 5.0) -> bool:
    """Stop the forwarder of ``pid_file`` by its pid (SIGTERM, then SIGKILL), wait until it is gone,
    remove its pid file and record. True if one was running."""
    pid = forwarder_pid(pid_file)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while not _exited(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + wait_s
            time.sleep(0.005)
    for path in (pid_file, _record_path(pid_file)):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return pid is not None
