"""The engine's one seam to the network layer: ``open_for_job`` gives an egress job its network.

It takes a ready namespace from the pool when there is one (no netlink and no pyroute2 in this
process: ``pool/claim.py``), else begins a ``JobNetwork`` on a thread of its own, so the engine makes
the job's disk, cgroup and rootfs meanwhile. The engine waits for it (``JobEgress.ready``) only when it
writes the container's config, and closes it after the container is gone; closing then starts a refill
of the pool in the background if the claim left it low, so that start-up is never on a job's wall time.

Import-light like the claim, since a pooled job goes through here on ``sandpit exec``'s hot path: the
thread pool and the job side (pyroute2 on use, ipaddress, dataclasses) load only when no pooled
namespace was there.
"""

from __future__ import annotations

import threading

from pipelines.record import record
from worker import TYPE_CHECKING
from worker.sandbox.network.pool.claim import PooledNetwork, claim, pool_request
from worker.sandbox.network.pool.refill import refill_if_low

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Future, ThreadPoolExecutor

    from worker.sandbox.network.host import HostNetwork
    from worker.sandbox.network.job import JobNetwork
    from worker.sandbox.network.pool.layout import PoolRequest
    from worker.sandbox.network.settings import NetworkSettings
    from worker.settings import Settings

#: threads that make job networks while their jobs' disks and rootfs are made
_MAKERS = 8


@record(frozen=True)
class ReadyNetwork:
    """What a container needs of its network: the namespace to join and its /etc/resolv.conf."""

    netns_path: str
    resolv_conf: bytes


class JobEgress:
    """One job's egress network, from ``open_for_job``: a claimed pool namespace, or a ``JobNetwork``
    being made on another thread. ``ready()`` waits for it (raising what making it raised);
    ``close()`` (idempotent; also the context manager's exit) drops it, waiting for one still being
    made, then starts a refill of the pool if it ran low."""

    __slots__ = ("_closed", "_making", "_pooled", "_request")

    def __init__(self, request: PoolRequest | None, pooled: PooledNetwork | None,
                 making: Future[JobNetwork] | None) -> None:
        self._request = request
        self._pooled = pooled
        self._making = making
        self._closed = False

    def ready(self) -> ReadyNetwork:
        if self._pooled is not None:
            return ReadyNetwork(self._pooled.netns_path, self._pooled.resolv_conf)
        if self._making is None:
            raise ValueError("a JobEgress has a pooled namespace or one being made")
        net = self._making.result()
        return ReadyNetwork(net.netns_path, net.resolv_conf or b"")

    def __enter__(self) -> JobEgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._pooled is not None:
                self._pooled.close()
            elif self._making is not None:
                _close_once_made(self._making)
        finally:
            if self._request is not None:
                refill_if_low(self._request, self._pooled)


def open_for_job(job_id: str, settings: Settings, network: NetworkSettings | None,
                 host: Callable[[], HostNetwork]) -> JobEgress:
    """The egress network of job ``job_id``: from the pool that ``network`` (else the process's
    ``settings``) names, else made on the host ``host()`` prepares (once per engine). Raises what
    claiming or preparing the host raised; what making the job's network raises comes from ``ready()``."""
    request = network.pool_request() if network is not None else pool_request(settings)
    pooled = claim(request, job_id) if request is not None else None
    if pooled is not None:
        return JobEgress(request, pooled, None)
    try:
        prepared = host()
        from worker.sandbox.network.job import JobNetwork  # the unpooled path only: its imports cost ms

        making = _makers().submit(JobNetwork, prepared.settings, job_id, "egress", prepared)
    except BaseException:
        if request is not None:
            refill_if_low(request, None)  # the pool was empty or unusable: have it filled for the next job
        raise
    return JobEgress(request, None, making)


def _close_once_made(making: Future[JobNetwork]) -> None:
    try:
        net = making.result()
    except Exception:
        return  # never made: nothing to close
    net.close()


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _makers() -> ThreadPoolExecutor:
    from concurrent.futures import ThreadPoolExecutor  # only unpooled egress jobs pay for the import

    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_MAKERS, thread_name_prefix="sandpit-net")
        return _pool
