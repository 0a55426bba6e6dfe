"""The pool of ready egress namespaces on disk: its directory, its files, and what its entries were made
for (``PoolConfig``). Every side of the pool shares this: the claim, the fill, the refill and the reaper.

Import-light, like ``claim.py`` which reads it on the hot path of ``sandpit exec --network egress``: only
os, fcntl, json, errno, zlib and the project's ``record`` (no dataclasses, pathlib, typing, ipaddress).

Layout of ``<run dir>/net/pool/<config key>/`` (0700, root; one pool per network configuration, so
processes with different settings, e.g. another host namespace, never drain each other's pool)::

    meta.json         {"config": [...], "lease_dir": "10.213.0.0_16", "resolv_conf": "...", "dns_pid_file": ...}
    <slot>.<token>    an nsfs bind mount: a configured egress namespace nobody has used
    refill.lock       flock held by the one refill at work
    refill.log        what the last detached refill printed

The entry's address lease (``<state>/net/leases/<lease_dir>/<slot>``) says ``pool <token> <pool dir>``
while the entry waits (``pool_lease_text``); a claim rewrites it to the job's name (``claim.py``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import zlib

from pipelines.files.locks import lock_fd
from pipelines.record import record

META = "meta.json"
REFILL_LOCK = "refill.lock"
REFILL_LOG = "refill.log"
#: what a failed refill writes to refill.log (claimers back off when they read it; see refill.py)
REFILL_FAILED = b"refill failed"
#: the fd number the detached refill finds its (already locked) refill.lock on
REFILL_LOCK_FD = 3
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3)
CLONE_NEWNET = 0x40000000
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@record(frozen=True)
class PoolConfig:
    """What a pool entry depends on; a claimer whose configuration differs from the pool's takes none.

    Paths are normalised (``made``), so two spellings of one directory name one pool. It is stored, in
    ``meta.json``, in a ``PoolRequest`` and in the detached refill's argument, as a JSON array in field
    order (``stored``): the form pools made by earlier versions have, so an upgrade keeps using them (and
    its reaper still recognises them) instead of leaving them behind under another key.

    >>> config = PoolConfig.made(state_dir="/s/", subnet=None, bridge="sandpit0", resolvers=["1.1.1.1"],
    ...                          allow=[], host_netns=None, uplink=None, veth_prefix="spv", table="sandpit")
    >>> config.stored()[:4], PoolConfig.from_stored(config.stored()) == config
    (['/s', None, 'sandpit0', ['1.1.1.1']], True)
    """

    state_dir: str
    subnet: str | None
    bridge: str
    resolvers: tuple[str, ...]
    allow: tuple[str, ...]
    host_netns: str | None
    uplink: str | None
    veth_prefix: str
    table: str

    @classmethod
    def made(cls, *, state_dir: str, subnet: str | None, bridge: str, resolvers: list[str] | tuple[str, ...],
             allow: list[str] | tuple[str, ...], host_netns: str | None, uplink: str | None, veth_prefix: str,
             table: str) -> PoolConfig:
        """A configuration with its paths normalised."""
        return cls(state_dir=os.path.normpath(state_dir), subnet=subnet, bridge=bridge, resolvers=tuple(resolvers),
                   allow=tuple(allow), host_netns=os.path.normpath(host_netns) if host_netns else None,
                   uplink=uplink, veth_prefix=veth_prefix, table=table)

    def stored(self) -> list[object]:
        """The JSON form (see the class docstring)."""
        return [self.state_dir, self.subnet, self.bridge, list(self.resolvers), list(self.allow), self.host_netns,
                self.uplink, self.veth_prefix, self.table]

    @classmethod
    def from_stored(cls, value: object) -> PoolConfig | None:
        """The configuration ``stored()`` gave, or None for anything else (a damaged or foreign meta.json).

        >>> PoolConfig.from_stored(["config"]) is None
        True
        """
        if not isinstance(value, list) or len(value) != 9:
            return None
        state_dir, subnet, bridge, resolvers, allow, host_netns, uplink, veth_prefix, table = value
        texts = (state_dir, bridge, veth_prefix, table)
        optional = (subnet, host_netns, uplink)
        lists = (resolvers, allow)
        if (not all(isinstance(text, str) for text in texts)
                or not all(item is None or isinstance(item, str) for item in optional)
                or not all(isinstance(items, list) and all(isinstance(i, str) for i in items) for items in lists)):
            return None
        return cls(state_dir=state_dir, subnet=subnet, bridge=bridge, resolvers=tuple(resolvers),
                   allow=tuple(allow), host_netns=host_netns, uplink=uplink, veth_prefix=veth_prefix, table=table)

    def key(self) -> str:
        """The name of this configuration's pool directory."""
        return pool_key(self.stored())

    def same_bridge(self, other: PoolConfig) -> bool:
        """Whether the entries of both hang on one bridge (its name, in one host namespace)."""
        return (self.bridge, self.host_netns) == (other.bridge, other.host_netns)

    def same_host_network(self, other: PoolConfig) -> bool:
        """Whether both are of one host network (same state dir, bridge, host namespace and veth
        names), whose veths and leases a reaper of either may judge."""
        return self.same_bridge(other) and (self.state_dir, self.veth_prefix) == (other.state_dir, other.veth_prefix)


def pool_key(stored: list[object]) -> str:
    """The name of the pool directory of a stored configuration (a collision only costs a fallback: the
    claimer also compares the full configuration in meta.json).

    >>> len(pool_key(["/s", None]))
    8
    """
    return f"{zlib.crc32(json.dumps(stored).encode()):08x}"


class PoolRequest:
    """Where the pool is and what its entries must have been made for.

    ``config`` is the stored form of that ``PoolConfig`` (``PoolConfig.stored``), compared as it is with
    meta.json's; ``made_for`` is the configuration it stands for, None when it stands for none (a request
    made by hand, whose claims then know no host namespace but their own).
    """

    __slots__ = ("config", "lease_root", "low_water", "made_for", "pool_dir", "size")

    def __init__(self, pool_dir: str, lease_root: str, config: list[object], size: int,
                 low_water: int | None = None) -> None:
        self.pool_dir = os.path.normpath(pool_dir)
        self.lease_root = lease_root
        self.config = config
        self.made_for = PoolConfig.from_stored(config)
        self.size = size
        self.low_water = (size + 1) // 2 if low_water is None else low_water

    def as_args(self) -> str:
        """The request as one argument for the detached refill (``PoolRequest(**json.loads(...))``)."""
        return json.dumps({"pool_dir": self.pool_dir, "lease_root": self.lease_root, "config": self.config,
                           "size": self.size, "low_water": self.low_water})


def open_private_dir(path: str) -> int:
    """An fd of directory ``path`` (its last component not a symlink), refused unless it belongs to
    this (root) user and no one else may enter it."""
    fd = os.open(path, DIR_FLAGS)
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


def entries(pool_fd: int) -> list[tuple[str, int, str]]:
    """(name, slot, token) of every entry in the pool directory."""
    return [(name, *parsed) for name in os.listdir(pool_fd) if (parsed := parse_entry(name)) is not None]


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


class RefillLock:
    """Holds a pool's refill lock (waiting for a running refill), if the pool directory exists."""

    def __init__(self, pool_dir: str | os.PathLike[str]) -> None:
        self.pool_dir = os.fspath(pool_dir)
        self.fd = -1

    def __enter__(self) -> RefillLock:
        try:
            pool_fd = open_private_dir(self.pool_dir)
        except FileNotFoundError:
            return self
        except PermissionError as exc:
            from worker.sandbox.network.errors import HostNetworkError  # not on the claim's import path

            raise HostNetworkError(f"refusing the pool directory {self.pool_dir}: {exc}") from exc
        try:
            self.fd = os.open(REFILL_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                              dir_fd=pool_fd)
        finally:
            os.close(pool_fd)
        lock_fd(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
