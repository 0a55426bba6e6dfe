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

from worker.record import record

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
