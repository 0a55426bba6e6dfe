"""All of a job's services, as the engine uses them: made and started before the job, waited for,
torn down after it.

    images resolved (recipes, the store, or pulled: ``ImageStore.get``, the job image's way)
    → the job's network namespace (egress: the job's; none: a loopback-only one made here)
    → /etc/hosts → each container made and started → its output read → its ports waited for
    → the job runs → every service killed → output drained, runtimes reaped → containers removed

``JobServices`` is a context manager; ``close()`` is idempotent and runs on every path. A service
that never opens its port, or exits, does not stop the job: as GitLab Runner does, the job starts
after the wait with a warning line in its log (``[sandpit] WARNING: service ... probably did not
start properly``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pipelines.job_record import ServiceRecord
from worker import TYPE_CHECKING
from worker.errors import InvalidRequest
from worker.sandbox.logs import JobLog, OutputSink
from worker.sandbox.request import ServiceRequest
from worker.sandbox.services.container import ServiceContainer, ServicePlace
from worker.sandbox.services.hosts import HostsFile
from worker.sandbox.services.logs import OutputPump, ServiceOutput, SharedJobLog
from worker.sandbox.services.naming import log_name
from worker.sandbox.services.ports import listening_here, wanted_ports

if TYPE_CHECKING:
    from worker.sandbox.images import ImageStore, StoredImage

#: how often the wait looks at the namespace's listening sockets
POLL_S = 0.02


def refuse_runtime(name: str) -> None:
    """Services need a runtime whose containers share one network namespace's loopback."""
    if name == "runsc":
        raise InvalidRequest("services cannot run under runsc: gVisor gives each container a network stack of its "
                             "own, so a service could not share the job's localhost; choose runtime crun or runc")


def resolve_images(store: ImageStore, services: tuple[ServiceRequest, ...], progress: Callable[[str], None],
                   cancel: threading.Event) -> list[StoredImage]:
    """Each service's image, resolved as the job's is (a recipe, else the store, else a pull); its
    ``pull_policy`` entries tried in order when one cannot reach the registry (GitLab's rule)."""
    from worker.sandbox.registry.skopeo import PullError

    images = []
    for service in services:
        tries: tuple[str | None, ...] = service.pull_policy or (None,)
        for i, policy in enumerate(tries):
            try:
                images.append(store.get(service.image, progress=progress, policy=policy, cancel=cancel))
                break
            except PullError as exc:
                if i == len(tries) - 1:
                    raise
                progress(f"service {service.image}: pull_policy {policy} failed ({exc}); trying {tries[i + 1]}")
    return images


class JobServices:
    """The services of one job, started by the constructor in ``place``'s network namespace (the
    job's egress one, or a ``ServiceNetwork``; ``netns_fd`` is its fd when the caller holds one, else
    the wait opens ``place.netns_path``), each with its own log under ``logs_dir``."""

    def __init__(self, requests: tuple[ServiceRequest, ...], images: list[StoredImage], place: ServicePlace,
                 logs_dir: Path, log_bytes: int, secrets: tuple[str, ...], debug: bool,
                 netns_fd: int | None) -> None:
        self._images = images
        self._debug = debug
        self._netns_fd = netns_fd
        self.place = place
        self.containers: list[ServiceContainer] = []
        self.pump = OutputPump(debug)
        self._logs: list[tuple[str, str]] = []
        self._states: list[ServiceRecord] = []
        self._closed = False
        try:
            for index, (request, image) in enumerate(zip(requests, images, strict=True)):
                container = ServiceContainer(index, request, image, place)
                self.containers.append(container)
                path = logs_dir / log_name(place.job_id, index)
                log = JobLog(path, log_bytes, None, secrets=secrets)
                self._logs.append((str(path), container.alias))
                try:
                    pid, out_fd, err_fd = container.start()
                except BaseException:
                    log.close()
                    raise
                self.pump.add(ServiceOutput(container.alias, log, pid, out_fd, err_fd))
            self.pump.start()
        except BaseException:
            self.close()
            raise

    # -- before the job ---------------------------------------------------------------------
    def wait_ready(self, timeout_s: float, cancel: threading.Event) -> list[str]:
        """Wait until every service that exposes ports listens on one of them, has exited, or
        ``timeout_s`` has passed (or the job is cancelled; 0: no wait at all); the lines to open the
        job's log with."""
        notes: list[str] = []
        waiting: dict[int, tuple[int, ...]] = {}
        for index, (container, image) in enumerate(zip(self.containers, self._images, strict=True)):
            exposed = image.config.ports if image.config is not None else ()
            ports, problem = wanted_ports(exposed, container.request.env)
            if problem is not None:
                notes.append(f"WARNING: service {container.alias}: {problem}")
            if ports:
                waiting[index] = ports
        off: list[int] = []
        if timeout_s <= 0:  # the operator turned the wait off (SANDPIT_SERVICE_WAIT=0)
            off, waiting = list(waiting), {}
        started = time.monotonic()
        ready_at: dict[int, float] = {}
        if waiting:
            deadline = started + timeout_s

            def watch() -> None:
                while waiting.keys() - ready_at.keys():
                    listening = listening_here()
                    now = time.monotonic()
                    for index, ports in waiting.items():
                        if index not in ready_at and listening.intersection(ports):
                            ready_at[index] = now - started
                    left = [i for i in waiting if i not in ready_at and self.pump.outputs[i].exit_code is None]
                    if not left or now >= deadline or cancel.is_set():
                        return
                    time.sleep(POLL_S)

            self._in_netns(watch)
        waited = round(time.monotonic() - started, 3)
        for index, container in enumerate(self.containers):
            ports = waiting.get(index, ())
            shown = ", ".join(f"{p}/tcp" for p in ports)
            output = self.pump.outputs[index]
            log_path = self._logs[index][0]
            if index in off:
                notes.append(f"service {container.alias} ({container.request.image}): not waited for (the wait "
                             "for services is off on this worker)")
                ready: bool | None = None
            elif not ports:
                notes.append(f"service {container.alias} ({container.request.image}) exposes no port: not waited "
                             "for (set HEALTHCHECK_TCP_PORT in its variables to wait for one)")
                ready = None
            elif index in ready_at:
                notes.append(f"service {container.alias} ({container.request.image}): port "
                             f"{shown if len(ports) == 1 else 'of ' + shown} open after {ready_at[index]:.2f}s")
                ready = True
            else:
                ready = False
                if output.exit_code is not None:
                    why = f"it exited with status {output.exit_code} before opening {shown}"
                    runtime_said = _runtime_error(container.runtime_log())
                    if runtime_said:
                        why += f" ({runtime_said})"
                elif cancel.is_set():
                    why = "the job was cancelled while it started"
                else:
                    why = f"no port of {shown} was open after {timeout_s:g}s"
                notes.append(f"WARNING: service {container.alias} ({container.request.image}) probably did not "
                             f"start properly: {why}; the job starts anyway (the service's log: {log_path})")
            self._states.append(ServiceRecord(container.request.image, container.alias, log_path, ready,
                                             round(ready_at.get(index, waited), 3) if ports else 0.0))
        return notes

    def _in_netns(self, body: Callable[[], None]) -> None:
        from worker.sandbox.network.namespace import open_netns, run_in_netns

        fd = self._netns_fd
        owned = fd is None
        if fd is None:
            fd = open_netns(self.place.netns_path)
        try:
            run_in_netns(fd, body)
        finally:
            if owned:
                os.close(fd)

    def job_log(self, path: Path, limit_bytes: int, sink: OutputSink | None, secrets: tuple[str, ...]) -> JobLog:
        """The job's log: shared with the services' reader when their lines go into it
        (``CI_DEBUG_SERVICES``), else a plain one."""
        if not self._debug:
            return JobLog(path, limit_bytes, sink, secrets=secrets)
        log = SharedJobLog(path, limit_bytes, sink, secrets=secrets)
        self.pump.attach(log)
        return log

    def records(self) -> tuple[ServiceRecord, ...]:
        if self._states:
            return tuple(self._states)
        return tuple(ServiceRecord(c.request.image, c.alias, path, None, 0.0)
                     for c, (path, _alias) in zip(self.containers, self._logs, strict=False))

    # -- after the job ----------------------------------------------------------------------
    def __enter__(self) -> JobServices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill every service, drain and reap them, remove their containers (idempotent)."""
        if self._closed:
            return
        self._closed = True
        failure: BaseException | None = None
        try:
            for container in self.containers:
                container.kill()
            self.pump.stop()
        except BaseException as exc:
            failure = exc
        for container in reversed(self.containers):  # each one removed even when another fails
            try:
                container.close()
            except BaseException as exc:
                failure = failure or exc
        if failure is not None:
            raise failure


def _runtime_error(log_file: Path) -> str | None:
    from worker.sandbox.supervise import runtime_error

    said = runtime_error(log_file)
    return said[:300] if said else None


class ServiceNetwork:
    """The namespace a job with services runs in when its network is ``none``: only loopback,
    shared by the job and its services (made by ``network.namespace``; closing drops it)."""

    def __init__(self) -> None:
        from worker.sandbox.network.namespace import create_loopback_netns

        self._netns = create_loopback_netns()
        self.fd = self._netns.fd
        self.path = self._netns.path

    def close(self) -> None:
        self._netns.close()


def service_hosts(job_dir: Path, requests: tuple[ServiceRequest, ...]) -> HostsFile:
    """The job's /etc/hosts with every name of every service."""
    return HostsFile(str(job_dir), tuple(name for request in requests for name in request.aliases))
