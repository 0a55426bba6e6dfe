"""Several sandpit instances on one host: what each one names, and what they all share.

An *instance* is one pair of a run dir and a state dir (``SANDPIT_RUN_DIR``, ``SANDPIT_STATE_DIR``):
its job locks, runtime state, job dirs, scratch disk and address leases live there. Everything an
instance makes *outside* those dirs, in namespaces the whole host shares, carries its instance id,
so no instance ever lists, judges or removes another's objects:

============================  ================================  ====================================
object                        default instance                  any other instance
============================  ================================  ====================================
cgroup parent                 ``sandpit/``                      ``sandpit-<id>/``
bridge, nft tables            ``sandpit0``, ``sandpit``         ``sandpit<id>`` (both)
host-side veths               ``spv<slot>``                     ``sp<id><slot>``
============================  ================================  ====================================

The default instance (``/run/sandpit`` with ``/var/lib/sandpit``, however spelled: the paths are
resolved) keeps the names sandpit always had, so an upgrade finds its own objects again; its reaper
never looked beyond ``sandpit/`` either, so old and new versions side by side are safe too.

Two things cannot be split by name because they are one resource of the host: host uid ranges and
the choice of a free subnet. Those go through one host-wide registry, ``/run/sandpit-instances``,
whatever the run dir: ``uids/<first uid>-<count>.lock`` (a ``flock`` per leased range, see
``leases.lease_uid_slot``) and ``net.lock`` (held while a bridge's subnet is chosen, so two instances
starting at once never pick the same one; later ones see the first one's route and pick another).
"""

from __future__ import annotations

import os

from pipelines.files.locks import FileLock, hold, lock_fd
from pipelines.record import record

#: the registry every instance of the host shares; /run is a tmpfs, so it starts empty at each boot,
#: like every lock and namespace it describes
HOST_REGISTRY = "/run/sandpit-instances"
DEFAULT_RUN_DIR = "/run/sandpit"
DEFAULT_STATE_DIR = "/var/lib/sandpit"


@record(frozen=True)
class InstanceNames:
    """The host-wide names of one instance (see the module docstring)."""

    cgroup_parent: str
    bridge: str
    table: str
    veth_prefix: str


def instance_key(run_dir: str, state_dir: str) -> str:
    """The instance id of an already resolved run dir and state dir: '' for the default instance,
    else 8 hex digits of their SHA-256 (an 8-digit id keeps every name within the 15 characters of an
    interface or nft table name: ``sandpit`` + 8).

    >>> instance_key("/run/sandpit", "/var/lib/sandpit")
    ''
    >>> instance_key("/run/sandpit-b", "/var/lib/sandpit-b")
    '9ccc3dce'
    """
    if (run_dir, state_dir) == (DEFAULT_RUN_DIR, DEFAULT_STATE_DIR):
        return ""
    try:  # the builtin module costs 0.3 ms; hashlib loads OpenSSL first (≈6 ms on every exec)
        from _sha256 import sha256
    except ImportError:  # Python 3.12+ renamed it
        from hashlib import sha256
    return str(sha256(f"{run_dir}\0{state_dir}".encode()).hexdigest()[:8])


def resolved_instance_id(run_dir: os.PathLike[str] | str, state_dir: os.PathLike[str] | str) -> str:
    """``instance_key`` of the paths as the kernel resolves them (``/var/run/sandpit`` is
    ``/run/sandpit``, a symlinked state dir is its target), so every spelling names one instance."""
    return instance_key(os.path.realpath(run_dir), os.path.realpath(state_dir))


def instance_names(instance_id: str) -> InstanceNames:
    """The names of the instance ``instance_id``.

    >>> instance_names("")
    InstanceNames(cgroup_parent='sandpit', bridge='sandpit0', table='sandpit', veth_prefix='spv')
    >>> instance_names("9ccc3dce").bridge
    'sandpit9ccc3dce'
    """
    if not instance_id:
        return InstanceNames(cgroup_parent="sandpit", bridge="sandpit0", table="sandpit", veth_prefix="spv")
    if len(instance_id) != 8 or any(c not in "0123456789abcdef" for c in instance_id):
        raise ValueError(f"bad instance id {instance_id!r}")
    # "sp" + id: never a prefix of the default "spv" names (no 'v' in hex), at most 15 with a 4-digit slot
    return InstanceNames(cgroup_parent=f"sandpit-{instance_id}", bridge=f"sandpit{instance_id}",
                         table=f"sandpit{instance_id}", veth_prefix=f"sp{instance_id}")


def uid_registry() -> str:
    """Where host uid ranges are leased (shared by every instance)."""
    return os.path.join(HOST_REGISTRY, "uids")


def net_lock() -> str:
    """The lock held while an instance chooses its bridge's subnet (shared by every instance)."""
    return os.path.join(HOST_REGISTRY, "net.lock")


# ---- the owners of state dirs ---------------------------------------------------------------------

_claimed: dict[tuple[str, str], FileLock] = {}


def owners_dir(registry: str = HOST_REGISTRY) -> str:
    return os.path.join(registry, "owners")


def claim_instance(run_dir: os.PathLike[str] | str, state_dir: os.PathLike[str] | str,
                   registry: str = HOST_REGISTRY) -> None:
    """Register this process as a user of the instance (run dir, state dir) in the host-wide registry,
    or raise ConfigError when a *live* instance with another run dir uses the same state dir.

    That is the one pairing names cannot keep apart: job dirs and job disks live in the state dir,
    but whether a job is alive is told by the locks of the run dir, so the reaper of one instance
    would take the other's running jobs for dead ones. (Two instances sharing a run dir share those
    locks and judge each other rightly; they are allowed.) Each process holds a shared ``flock`` on
    ``owners/<id>`` (the file says which dirs) for as long as it lives; an entry nobody holds is an
    instance that is gone, and is ignored. Called once per process and instance (engine, reaper).
    """
    from worker.errors import ConfigError

    run, state = os.path.realpath(run_dir), os.path.realpath(state_dir)
    if (run, state) in _claimed:
        return
    folder = owners_dir(registry)
    os.makedirs(folder, mode=0o755, exist_ok=True)
    ident = instance_key(run, state) or "default"
    text = f"{run}\n{state}\n"
    with hold(os.path.join(folder, ".lock")):  # one claim at a time on the host: check and hold as one step
        for name in os.listdir(folder):
            if name.startswith("."):
                continue
            other = _read_live(os.path.join(folder, name))
            if other is None:
                continue
            other_run, _, other_state = other.partition("\n")
            other_state = other_state.strip()
            if name == ident and other != text:
                raise ConfigError(f"the sandpit instance id {ident} of run dir {run} and state dir {state} is "
                                  f"already that of run dir {other_run} and state dir {other_state}; "
                                  "choose another SANDPIT_RUN_DIR")
            if name != ident and other_state == state and other_run != run:
                raise ConfigError(f"state dir {state} is in use by the running sandpit instance whose run dir is "
                                  f"{other_run}, not {run}: give each instance its own SANDPIT_STATE_DIR "
                                  "(or use the same SANDPIT_RUN_DIR)")
        entry = hold(os.path.join(folder, ident), shared=True, mode=0o644)
        fd = entry.fd
        assert fd is not None
        if os.pread(fd, 4096, 0) != text.encode():
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode(), 0)
        _claimed[(run, state)] = entry


def _read_live(path: str) -> str | None:
    """The text of a registry entry some live process holds, None for an entry nobody holds."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not lock_fd(fd, blocking=False):
            return os.pread(fd, 4096, 0).decode(errors="replace")
        return None  # nobody holds it: an instance that is gone (our lock goes with the close)
    finally:
        os.close(fd)


def forget_instance(run_dir: os.PathLike[str] | str, state_dir: os.PathLike[str] | str,
                    registry: str = HOST_REGISTRY) -> bool:
    """Drop this process's claim and remove the registry entry unless another process still holds
    it (an instance being removed: tests, a deployment torn down); True if the entry is gone."""
    run, state = os.path.realpath(run_dir), os.path.realpath(state_dir)
    entry = _claimed.pop((run, state), None)
    if entry is not None:
        entry.release()
    folder = owners_dir(registry)
    path = os.path.join(folder, instance_key(run, state) or "default")
    try:
        lock = hold(os.path.join(folder, ".lock"), create=False)  # no claim opens the entry while it is judged
    except FileNotFoundError:
        return True
    with lock:
        if _read_live(path) is not None:
            return False
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return True
