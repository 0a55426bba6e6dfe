"""Errors of the network layer.

The layer's root derives from the sandbox's, so the whole project has one error root
(``worker/errors.py``)::

    SandpitError
    └── SandboxError
        └── NetworkError         root of this layer: anything the job network layer could not do
            ├── NetlinkError             the kernel refused a netlink request (``errno`` set)
            ├── HostNetworkError         the host side (bridge, subnet, nft ruleset) could not be prepared
            │   └── NoFreeSubnet         every candidate subnet collides with a route on the host
            ├── AddressesExhausted       every address of the subnet is leased by a live job
            └── CleanupBacklog           too many job networks are still being freed by the kernel

Every one of them is a failure of sandpit's own, never the job's: ``Engine.run`` ends the job
``error``/``infra_error`` with the message, as for any ``SandboxError``.
"""

from __future__ import annotations

from worker.errors import SandboxError


class NetworkError(SandboxError):
    """Root of the network layer's errors."""


class NetlinkError(NetworkError, OSError):
    """The kernel answered a netlink request with an error; ``errno`` holds it."""


class HostNetworkError(NetworkError):
    """The bridge, the subnet or the nft ruleset of the host could not be set up."""


class NoFreeSubnet(HostNetworkError):
    """No candidate subnet is free of the host's routes; configure ``subnet`` explicitly."""


class AddressesExhausted(NetworkError):
    """Every job address is leased by a live job."""


class CleanupBacklog(NetworkError):
    """The kernel has not yet freed enough torn-down job networks; try again later."""
