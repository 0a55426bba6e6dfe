"""Taking a ready egress namespace from the pool: no netlink, no pyroute2, only cheap stdlib.

This is the hot path of ``sandpit exec --network egress``: it must stay import-light (os, fcntl,
json, errno, sys, threading and the project's ctypes mount helpers; never pyroute2, dataclasses,
pathlib, typing, ipaddress, subprocess). The pool is made and refilled by ``pool.py`` (which has
pyroute2 loaded); see docs/network.md, "The pool of ready namespaces".

Layout of ``<run dir>/net/pool/<config key>/`` (0700, root; one pool per network configuration, so
processes with different settings, e.g. another host namespace, never drain each other's pool)::

    meta.json         {"config": [...], "lease_dir": "10.213.0.0_16", "resolv_conf": "...", "dns_pid_file": ...}
    <slot>.<token>    an nsfs bind mount: a configured egress namespace nobody has used
    refill.lock       flock held by the one refill at work
    refill.log        what the last detached refill printed

The entry's address lease (``<state>/net/leases/<lease_dir>/<slot>``) contains ``pool <token> <pool
dir>`` while the entry waits. Claiming it, under that lease's ``flock`` (so one claimer only):

1. lock the lease (non-blocking; busy → another claimer, a refill or the reaper: try the next one);
2. it must still say ``pool <token> <pool dir>`` (anything else: the entry was used or is broken: skip it);
3. open the entry (``O_NOFOLLOW``, relative to the pool dir's fd) and check it is a network
   namespace, and neither this process's own nor the configured host namespace;
4. rewrite the lease to ``<pid> <job id>``: from here on no one else will ever take it (single use);
5. detach and remove the bind mount; the job holds the namespace by its fd alone.

Closing the fd at teardown lets the kernel free the namespace and its veth; the lease is left
unlocked with the job's name, and is removed (with the veth, if still there) by the next refill or
reaper, like the lease of a dead worker. A namespace is never given to a second job.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import threading
import zlib

#: the default instance's names; any other instance's come from ``instance.instance_names``
DEFAULT_BRIDGE = "sandpit0"
DEFAULT_VETH_PREFIX = "spv"
DEFAULT_TABLE = "sandpit"
#: ready namespaces kept when the pool is on; a refill starts when fewer than half are left
DEFAULT_POOL_SIZE = 16

META = "meta.json"
REFILL_LOCK = "refill.lock"
REFILL_LOG = "refill.log"
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3)
CLONE_NEWNET = 0x40000000
#: the fd number the detached refill finds its (already locked) refill.lock on
REFILL_LOCK_FD = 3
#: after a failed refill, no new one is started for this long (a broken host must not make every
#: egress job spawn a doomed refill); jobs meanwhile make their networks themselves
REFILL_BACKOFF_S = 30.0
REFILL_FAILED = b"refill failed"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def network_config(state_dir: str, subnet: str | None, bridge: str, resolvers: list[str], allow: list[str],
                   host_netns: str | None, uplink: str | None, veth_prefix: str, table: str) -> list[object]:
    """What a pool entry depends on; a claimer whose configuration differs from the pool's takes none.

    >>> network_config("/s", None, "sandpit0", ["1.1.1.1"], [], None, None, "spv", "sandpit")[:3]
    ['/s', None, 'sandpit0']
    """
    return [os.path.normpath(state_dir), subnet, bridge, list(resolvers), list(allow),
            os.path.normpath(host_netns) if host_netns else None, uplink, veth_prefix, table]


def pool_key(config: list[object]) -> str:
    """The name of the pool directory of a configuration (a collision only costs a fallback: the
    claimer also compares the full configuration in meta.json).

    >>> len(pool_key(["/s", None]))
    8
    """
    return f"{zlib.crc32(json.dumps(config).encode()):08x}"


class PoolRequest:
    """Where the pool is and what its entries must have been made for."""

    __slots__ = ("config", "lease_root", "low_water", "pool_dir", "size")

    def __init__(self, pool_dir: str, lease_root: str, config: list[object], size: int,
                 low_water: int | None = None) -> None:
        self.pool_dir = os.path.normpath(pool_dir)
        self.lease_root = lease_root
        self.config = config
        self.size = size
        self.low_water = (size + 1) // 2 if low_water is None else low_water

    def as_args(self) -> str:
        """The request as one argument for the detached refill."""
        return json.dumps({"pool_dir": self.pool_dir, "lease_root": self.lease_root, "config": self.config,
                           "size": self.size, "low_water": self.low_water})


def pool_request(settings: object, network: object | None = None) -> PoolRequest | None:
    """The pool to claim from, or None when it is off: from an explicit ``NetworkSettings``
    (``network``), else from the process's ``Settings`` without importing the network layer."""
    if network is not None:
        return network.pool_request()  # type: ignore[attr-defined, no-any-return]
    size = int(getattr(settings, "net_pool", DEFAULT_POOL_SIZE))
    if size <= 0:
        return None
    state_dir = os.fspath(settings.state_dir)  # type: ignore[attr-defined]
    run_dir = os.fspath(settings.run_dir)  # type: ignore[attr-defined]
    host_netns = getattr(settings, "net_host_netns", None)
    from worker.sandbox.instance import instance_names  # the names Settings.network() gives too

    names = instance_names(str(getattr(settings, "instance_id", "")))
    config = network_config(state_dir, getattr(settings, "subnet", None), names.bridge,
                            list(getattr(settings, "resolvers", ())), list(getattr(settings, "net_allow", ())),
                            os.fspath(host_netns) if host_netns else None, None, names.veth_prefix,
                            names.table)
    return PoolRequest(os.path.join(run_dir, "net", "pool", pool_key(config)),
                       os.path.join(state_dir, "net", "leases"), config, size)


class PooledNetwork:
    """A claimed pool namespace, held by ``netns_fd`` until ``close()`` (idempotent); the job-facing
    face of ``JobNetwork`` (``netns_path``, ``resolv_conf``)."""

    __slots__ = ("_lease_fd", "netns_fd", "remaining", "resolv_conf", "slot")

    def __init__(self, netns_fd: int, lease_fd: int, resolv_conf: bytes, slot: int, remaining: int) -> None:
        self.netns_fd = netns_fd
        self._lease_fd = lease_fd
        self.resolv_conf = resolv_conf
        self.slot = slot
        self.remaining = remaining

    @property
    def netns_path(self) -> str:
        return f"/proc/{os.getpid()}/fd/{self.netns_fd}"

    @property
    def closed(self) -> bool:
        return self.netns_fd < 0

    def close(self) -> None:
        """Drop the namespace (the kernel frees it and the veth) and unlock the lease, which keeps the
        job's name: the next refill or reaper removes it once it may (see the module docstring)."""
        if self.netns_fd >= 0:
            os.close(self.netns_fd)
            self.netns_fd = -1
        if self._lease_fd >= 0:
            os.close(self._lease_fd)
            self._lease_fd = -1


def open_private_dir(path: str) -> int:
    """An fd of directory ``path`` (its last component not a symlink), refused unless it belongs to
    this (root) user and no one else may enter it."""
    fd = os.open(path, _DIR_FLAGS)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        raise PermissionError(errno.EPERM, f"{path} must belong to uid {os.geteuid()} with mode 0700")
    return fd


def make_private_dir(path: str) -> None:
    """``mkdir -p`` with mode 0700 for the directories it makes."""
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        make_private_dir(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass


def read_meta(pool_fd: int) -> dict[str, object] | None:
    try:
        fd = os.open(META, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pool_fd)
    except OSError:
        return None
    try:
        meta = json.loads(os.read(fd, 1 << 16))
    except ValueError:
        return None
    finally:
        os.close(fd)
    return meta if isinstance(meta, dict) else None


def parse_entry(name: str) -> tuple[int, str] | None:
    """``"12.ab34cd56"`` → (12, "ab34cd56"); None for anything that is not a pool entry.

    >>> parse_entry("12.ab34cd56"), parse_entry("meta.json")
    ((12, 'ab34cd56'), None)
    """
    slot, dot, token = name.partition(".")
    if not dot or not slot.isdigit() or not token or not all(c in "0123456789abcdef" for c in token):
        return None
    return int(slot), token


def pool_lease_text(token: str, pool_dir: str) -> bytes:
    """What a waiting entry's lease says: its token and its pool, so that any reaper, whatever its
    settings, can tell a waiting entry from a dead job's lease.

    >>> pool_lease_text("ab12", "/run/sandpit/net/pool")
    b'pool ab12 /run/sandpit/net/pool\\n'
    """
    return f"pool {token} {pool_dir}\n".encode()


def is_netns(fd: int) -> bool:
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False


def claim(request: PoolRequest, job_id: str) -> PooledNetwork | None:
    """Take one ready namespace for ``job_id``, or None (no pool, empty, made for another
    configuration). Never blocks on another process and never uses netlink."""
    try:
        pool_fd = open_private_dir(request.pool_dir)
    except OSError:
        return None
    try:
        meta = read_meta(pool_fd)
        if meta is None or meta.get("config") != request.config:
            return None
        lease_dir = str(meta.get("lease_dir", ""))
        if not lease_dir or not all(c in "0123456789._" for c in lease_dir):
            return None
        resolv_conf = str(meta.get("resolv_conf", "")).encode()
        try:
            lease_fd = os.open(os.path.join(request.lease_root, lease_dir), _DIR_FLAGS)
        except OSError:
            return None
        try:
            entries = [(name, parsed) for name in os.listdir(pool_fd) if (parsed := parse_entry(name))]
            if not entries:
                return None
            first = int.from_bytes(os.urandom(2), "little") % len(entries)  # spread concurrent claimers
            host_netns = request.config[5] if len(request.config) > 5 else None
            for name, (slot, token) in entries[first:] + entries[:first]:
                fds = _claim_entry(request.pool_dir, pool_fd, lease_fd, name, slot, token, job_id, host_netns)
                if fds is not None:
                    pooled = PooledNetwork(fds[0], fds[1], resolv_conf, slot, len(entries) - 1)
                    try:
                        _check_dns(meta.get("dns_pid_file"), request.config)
                    except BaseException:
                        pooled.close()
                        raise
                    return pooled
            return None
        finally:
            os.close(lease_fd)
    finally:
        os.close(pool_fd)


def _check_dns(pid_file: object, config: list[object]) -> None:
    """Restart the jobs' DNS forwarder on the gateway (``forwarder.py``) if it died: the pool's
    namespaces name it in their resolv.conf. Alive: a pid file and a /proc read, no import."""
    if not isinstance(pid_file, str) or not pid_file:
        return
    try:
        with open(pid_file, "rb") as f:
            pid = int(f.read(32).strip() or b"0")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if f"--pid-file={pid_file}".encode() in f.read().split(b"\0"):
                return
    except (OSError, ValueError):
        pass
    from pathlib import Path

    from worker.sandbox.network.forwarder import revive_forwarder

    revive_forwarder(pid_file, Path(str(config[0])) / "net" / "host.lock")


def _host_namespaces(host_netns: object) -> set[int]:
    """Inodes of the namespaces a job must never be given: this process's and the configured host's."""
    found = {os.stat("/proc/self/ns/net").st_ino}
    if isinstance(host_netns, str):
        try:
            found.add(os.stat(host_netns).st_ino)
        except OSError:
            pass
    return found


def _claim_entry(pool_dir: str, pool_fd: int, lease_dir_fd: int, name: str, slot: int, token: str,
                 job_id: str, host_netns: object) -> tuple[int, int] | None:
    try:
        lease = os.open(str(slot), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=lease_dir_fd)
    except OSError:
        return None
    netns = -1
    try:
        try:
            fcntl.flock(lease, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        if os.fstat(lease).st_nlink == 0 or os.pread(lease, 4096, 0) != pool_lease_text(token, pool_dir):
            return None  # reaped meanwhile, or already used: never twice
        try:
            netns = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pool_fd)
        except OSError:
            return None
        if not is_netns(netns) or os.fstat(netns).st_ino in _host_namespaces(host_netns):
            return None
        os.ftruncate(lease, 0)
        os.pwrite(lease, f"{os.getpid()} {job_id}\n".encode(), 0)
        remove_entry(pool_fd, name)
        claimed = (netns, lease)
        netns = lease = -1
        return claimed
    finally:
        if netns >= 0:
            os.close(netns)
        if lease >= 0:
            os.close(lease)


def remove_entry(pool_fd: int, name: str) -> bool:
    """Detach an entry's bind mount (if any) and unlink it; False if it was not there or could not be
    removed. The path goes through the pool directory's fd, so a directory swapped meanwhile cannot
    redirect it."""
    from worker.sandbox.mounts import MNT_DETACH, UMOUNT_NOFOLLOW, umount

    try:
        umount(f"/proc/self/fd/{pool_fd}/{name}", MNT_DETACH | UMOUNT_NOFOLLOW)
    except OSError:
        pass  # not mounted: a refill died before mounting it
    try:
        os.unlink(name, dir_fd=pool_fd)
    except OSError:
        return False
    return True


def refill_if_low(request: PoolRequest, claimed: PooledNetwork | None) -> None:
    """Start a detached refill when fewer than ``low_water`` entries were left (or none was claimed).
    Called at teardown, so the refill's start-up is never on a job's wall time."""
    remaining = claimed.remaining if claimed is not None else 0
    if remaining < request.low_water:
        start_refill(request)


def start_refill(request: PoolRequest) -> int | None:
    """Spawn one detached refill process unless one is at work; return its pid.

    The refill lock is taken here and handed to the child (an inherited open file description keeps
    the flock), so two claimers can never start two refills. The child runs ``python -I`` (no
    environment variables, no current directory on its path) with stdin on /dev/null and its output
    in ``refill.log``, in a session of its own, so Ctrl-C of the job does not stop it.
    """
    try:
        make_private_dir(request.pool_dir)
        pool_fd = open_private_dir(request.pool_dir)
    except OSError:
        return None
    try:
        lock = os.open(REFILL_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pool_fd)
    except OSError:
        os.close(pool_fd)
        return None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # a refill is already at work
        if _failed_recently(pool_fd):
            return None
        if lock == REFILL_LOCK_FD:  # posix_spawn's dup2 onto itself would keep it close-on-exec
            moved = os.dup(lock)
            os.close(lock)
            lock = moved
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        boot = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "from worker.sandbox.network.refill import main; sys.exit(main(sys.argv[2:]))")
        argv = [sys.executable, "-I", "-c", boot, root, request.as_args()]
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C.UTF-8"}
        log = os.path.join(request.pool_dir, REFILL_LOG)
        actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600),
                   (os.POSIX_SPAWN_DUP2, 1, 2),
                   (os.POSIX_SPAWN_DUP2, lock, REFILL_LOCK_FD)]
        try:
            pid = os.posix_spawn(sys.executable, argv, env, file_actions=actions, setsid=True)
        except OSError:
            return None
        # a long-lived process (a worker) must not collect zombies; a CLI exits before this matters
        threading.Thread(target=_reap_child, args=(pid,), name="sandpit-pool-refill", daemon=True).start()
        return pid
    finally:
        os.close(lock)
        os.close(pool_fd)


def _failed_recently(pool_fd: int) -> bool:
    import time

    try:
        fd = os.open(REFILL_LOG, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pool_fd)
    except OSError:
        return False
    try:
        return time.time() - os.fstat(fd).st_mtime < REFILL_BACKOFF_S and REFILL_FAILED in os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def _reap_child(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
