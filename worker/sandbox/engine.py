"""Running one command in a fresh sandbox, start to finish: the engine behind ``sandpit exec``.

    validate → image → runtime → job dir + leases → disk → cgroup → rootfs → config.json
    → runtime run (pipes) → supervise (logs, limits, timeout) → usage → artifacts → teardown

Every kernel object is owned by a context manager on one ExitStack, so teardown runs on every
path: success, failure, limit, exception, Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from pipelines.files.locks import take_own
from pipelines.identifiers import is_job_id
from pipelines.job_record import (
    JobRecord,
    JobUsage,
    Reason,
    RefusedArtifact,
    ServiceRecord,
    Status,
    StoredArtifact,
    Verdict,
)
from pipelines.record import record, replace
from pipelines.trace import mark
from worker import TYPE_CHECKING
from worker.errors import InvalidRequest, SandboxError, SandpitError, job_outcome
from worker.sandbox import spec as oci
from worker.sandbox.bundle import remove_bundle, write_private
from worker.sandbox.cgroups import JobCgroup, Usage, cgroup_parent
from worker.sandbox.disk import JobDisk, ensure_scratch
from worker.sandbox.image_process import JobProcess, job_process
from worker.sandbox.images import ImageStore
from worker.sandbox.leases import lease_uid_slot, write_owner
from worker.sandbox.logs import JobLog, OutputSink
from worker.sandbox.private_state import make_private
from worker.sandbox.request import SandboxRequest, keeps_artifacts, validate_request
from worker.sandbox.rootfs import JobRootfs
from worker.sandbox.runtime import Runtime, choose_runtime
from worker.sandbox.seccomp_cache import CompiledFilters
from worker.sandbox.supervise import RunEnd, supervise
from worker.sandbox.verdict import classify_end
from worker.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from worker.sandbox.images import StoredImage
    from worker.sandbox.network import HostNetwork, NetworkSettings
    from worker.sandbox.network.egress import JobEgress
    from worker.sandbox.seed import Seed
    from worker.sandbox.services.group import JobServices
    from worker.sandbox.warm import Afterwards, WarmPool, WarmSandbox


@record
class _JobDraft:
    """What is known of a running job so far: filled in step by step by ``Engine._run`` (an error
    half-way keeps what came before it: the runtime, the log, the usage), sealed into the job's one
    :class:`JobRecord` by ``Engine.run``."""

    verdict: Verdict = Verdict(Status.ERROR, Reason.INFRA_ERROR)
    exit_code: int | None = None
    signal: int | None = None
    usage: JobUsage = JobUsage()
    artifacts: tuple[StoredArtifact, ...] = ()
    rejected_artifacts: tuple[RefusedArtifact, ...] = ()
    cache_files: tuple[StoredArtifact, ...] = ()
    report_files: tuple[StoredArtifact, ...] = ()
    runtime: str | None = None
    log_path: str | None = None
    services: tuple[ServiceRecord, ...] = ()

    def seal(self, name: str, job_id: str, started_at: str, duration_s: float) -> JobRecord:
        return JobRecord(
            name=name, status=self.verdict.status, reason=self.verdict.reason, exit_code=self.exit_code,
            signal=self.signal, duration_s=duration_s, started_at=started_at, finished_at=_now(),
            usage=self.usage, artifacts=self.artifacts, rejected_artifacts=self.rejected_artifacts, job_id=job_id,
            runtime=self.runtime, log_path=self.log_path, message=self.verdict.message, cache_files=self.cache_files,
            report_files=self.report_files, services=self.services,
        )


@record
class Box:
    """A sandbox's host side (made by ``Engine._box``): what a job's container runs in."""

    job_dir: Path
    uid_base: int
    userns: bool
    disk: JobDisk
    cg: JobCgroup
    rootfs: JobRootfs
    process: JobProcess
    ws_uid: int


def _now() -> str:
    # time.strftime rather than datetime: this module is on the start-up path of every exec
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}+00:00"


def _log_exception(message: str, *args: object) -> None:
    """The traceback of an unexpected error, when the entry point has set logging up."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger("sandpit.engine").exception(message, *args)


def _log_info(message: str, *args: object) -> None:
    # logging costs ~6 ms to import: only log when the entry point has set logging up (-v, workers)
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger("sandpit.engine").info(message, *args)


class Engine:
    """One per process; ``run()`` may be called from several threads at once."""

    def __init__(self, settings: Settings, network: NetworkSettings | None = None,
                 host_network: HostNetwork | None = None, *, compiled_seccomp: bool = True) -> None:
        self.settings = settings
        #: crun gets its compiled seccomp filter with the spec (worker/sandbox/seccomp_cache.py)
        self.compiled_seccomp = compiled_seccomp
        self._filters = CompiledFilters(settings.run_dir)
        make_private(settings.state_dir, settings.run_dir)  # and fixes what an older sandpit left open
        self._network_settings = network
        self._host_network: HostNetwork | None = host_network
        self.images = ImageStore(settings.state_dir, settings.images_dir, registry=settings.registry())
        self._seccomp = oci.load_seccomp()
        self._scratch: Path | None = None
        self._runtimes: dict[str | None, Runtime] = {}
        self._lock = threading.Lock()
        #: sandboxes made and started ahead of the jobs that take them (the service worker sets it)
        self.warm: WarmPool | None = None

    # -- host preparation ----------------------------------------------------------------
    def scratch(self) -> Path:
        with self._lock:
            if self._scratch is None:
                from worker.sandbox.instance import claim_instance

                claim_instance(self.settings.run_dir, self.settings.state_dir)  # refuses a shared state dir
                self._scratch = ensure_scratch(self.settings.state_dir, self.settings.scratch_bytes)
            return self._scratch

    def runtime(self, requested: str | None) -> Runtime:
        name = requested or self.settings.runtime
        with self._lock:
            if name not in self._runtimes:
                rt = choose_runtime(name, self.settings.run_dir)
                _log_info("runtime %s (%s) chosen%s", rt.name, rt.binary, "" if name else " automatically")
                self._runtimes[name] = rt
            return self._runtimes[name]

    def host_network(self) -> HostNetwork:
        """The bridge and policy egress jobs attach to, prepared on first use (idempotent)."""
        from worker.sandbox.network import prepare_host

        with self._lock:
            if self._host_network is None:
                self._host_network = prepare_host(self._network_settings or self.settings.network())
            return self._host_network

    def close(self) -> None:
        if self.warm is not None:
            self.warm.close()
        if self._host_network is not None:
            self._host_network.close()
            self._host_network = None

    @property
    def artifact_store(self) -> Path:
        return self.settings.state_dir / "artifacts"

    @property
    def logs_dir(self) -> Path:
        return self.settings.state_dir / "logs"

    # -- one job -------------------------------------------------------------------------
    def run(self, req: SandboxRequest, *, name: str = "exec", sink: OutputSink | None = None,
            cancel: threading.Event | None = None, job_id: str | None = None, seed: Seed | None = None,
            secrets: tuple[str, ...] = (), cache_paths: tuple[str, ...] = (),
            report_paths: tuple[str, ...] = (), notes: tuple[str, ...] = (), image: StoredImage | None = None,
            afterwards: Afterwards | None = None) -> JobRecord:
        """Run one job to its record (``image``: the store's image of ``req.image``, when the caller
        has just got it). With ``afterwards``, the sandbox's teardown is left in it for the caller
        to finish (:meth:`finish`) once the record is out; without it, everything is gone when this
        returns."""
        job_id = job_id or os.urandom(6).hex()
        if not is_job_id(job_id):  # it names <state>/jobs/<id>, logs/<id>.jsonl, a lock, a cgroup, a disk
            return JobRecord.not_run(name, Verdict(Status.FAILED, Reason.INVALID_SPEC, (
                f"job id {job_id[:80]!r} is not valid: expected lowercase letters, digits and inner '-' "
                "(at most 64)")), started_at=_now(), finished_at=_now())
        started_at = _now()
        result = _JobDraft()
        t0 = time.monotonic()
        try:
            problems = validate_request(req)
            if problems:
                raise InvalidRequest("; ".join(problems))
            self._run(req, job_id, result, sink, cancel or threading.Event(), seed, secrets, cache_paths,
                      report_paths, notes, image, afterwards)
        except Exception as exc:  # one mapping for every path (worker/errors.py); never a traceback
            result.verdict = job_outcome(exc)
            if not isinstance(exc, SandpitError):
                _log_exception("job %s ended by an unexpected error", job_id)
        return result.seal(name, job_id, started_at, round(time.monotonic() - t0, 6))

    def finish(self, afterwards: Afterwards, *, warm: bool = True) -> None:
        """What :meth:`run` left in ``afterwards``: the sandbox's teardown (a failure is logged: the
        job's record is out, and a sandbox left behind is the reaper's), then a warm sandbox for
        the next job like it unless ``warm`` is False (worker/sandbox/warm.py)."""
        while afterwards.stacks:
            try:
                afterwards.stacks.pop().close()
            except Exception:
                _log_exception("a job's teardown failed; the reaper removes what is left")
        shape, afterwards.shape = afterwards.shape, None
        if warm and shape is not None and self.warm is not None and self.warm.make_room():
            self._make_warm(*shape)

    def _run(self, req: SandboxRequest, job_id: str, result: _JobDraft, sink: OutputSink | None,
             cancel: threading.Event, seed: Seed | None, secrets: tuple[str, ...],
             cache_paths: tuple[str, ...], report_paths: tuple[str, ...] = (), notes: tuple[str, ...] = (),
             image: StoredImage | None = None, afterwards: Afterwards | None = None) -> None:
        s = self.settings
        pulled: list[str] = []  # a pull's progress (when the store lacks the image): live, then first in the log
        if image is None:
            image = self.images.get(req.image, progress=_live_notes(pulled, sink), cancel=cancel)
        runtime = self.runtime(req.runtime).for_network(req.network)
        result.runtime = runtime.name
        service_images: list[StoredImage] = []
        if req.services:  # their images as the job's: a recipe, the store, or a pull (progress in the log)
            from worker.sandbox.services.group import refuse_runtime, resolve_images

            refuse_runtime(runtime.name)
            service_images = resolve_images(self.images, req.services, _live_notes(pulled, sink), cancel)
        scratch = self.scratch()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.logs_dir / f"{job_id}.jsonl"
        result.log_path = str(log_path)
        if notes or pulled:
            _write_notes(log_path, notes, sink)
            _write_notes(log_path, tuple(pulled), None)  # its reader has had them
        warmable = False
        if self.warm is not None:  # a service worker's engine (worker/sandbox/warm.py)
            from worker.sandbox.warm import warm_eligible

            warmable = warm_eligible(req, runtime.name, seed)
        with contextlib.ExitStack() as stack:
            # the owner lease comes first: the reaper treats a job dir whose lease is free as dead
            job_dir = self._own(stack, job_id, make_dir=not warmable)
            warm, process = self._take_warm(req, image, runtime) if warmable else (None, None)
            services: JobServices | None = None
            if warm is not None and process is not None:
                stack.enter_context(warm.stack)  # the warm sandbox's teardown, before the job id's lease
                box, container_id, started = warm.box, warm.container_id, warm.started
            else:
                if warmable:
                    job_dir.mkdir(mode=0o711)
                    stack.callback(remove_bundle, job_dir)
                container_id, started = f"sandpit-{job_id}", None
                # the job's network is made on another thread while disk, cgroup and rootfs are made here
                egress = self._egress(stack, job_id) if req.network == "egress" else None
                box = self._box(stack, req, job_id, job_dir, scratch, image, runtime)
                process = box.process
                if seed is not None:
                    from worker.sandbox.seed import plant_seed

                    try:
                        plant_seed(seed, box.rootfs.workspace, box.uid_base + box.ws_uid)
                    except OSError as exc:
                        raise SandboxError(f"cannot prepare the job's workspace: {exc}") from exc
                netns_path = resolv_conf = hosts_file = None
                if egress is not None:
                    netns_path, resolv_conf = self._egress_ready(egress, stack, job_dir)
                if req.services:  # started, and waited for, before the job (worker/sandbox/services)
                    services = self._services(stack, req, service_images, job_id, job_dir, box.disk, box.cg,
                                              box.uid_base, runtime, netns_path, resolv_conf, secrets)
                    netns_path, hosts_file = services.place.netns_path, services.place.hosts_file
                    wait_s = s.service_wait_s if req.services_timeout_s is None else req.services_timeout_s
                    _write_notes(log_path, tuple(services.wait_ready(wait_s, cancel)), sink)
                    result.services = services.records()
                config = self._config(req, box, process, image, runtime, netns_path, resolv_conf, hosts_file)
                write_private(job_dir / "config.json", json.dumps(config).encode())  # it holds the job's secrets
                stack.callback(_delete_container, runtime, container_id)
            if services is not None:  # shared with the services' reader under CI_DEBUG_SERVICES
                joblog = services.job_log(log_path, req.limits.log_bytes, sink, secrets)
            else:
                joblog = JobLog(log_path, req.limits.log_bytes, sink, secrets=secrets)
            stack.callback(joblog.close)
            mark("runtime_in")
            end = supervise(runtime, box.job_dir, container_id, box.cg, joblog, req.limits, cancel, started)
            mark("runtime_out")
            self._after_run(result, req, end, box, joblog, log_path, sink, cache_paths, report_paths)
            # the log is whole, and its live reader has had all of it, before the job's record says it ended
            joblog.close()
            # later, unless services ran: their log files are whole only once they are stopped
            if afterwards is not None and services is None:
                afterwards.stacks.append(stack.pop_all())
                if warmable and process.argv == req.argv:  # the job's own shell first: a launcher
                    afterwards.shape = (req, image, process.argv[0])

    def _own(self, stack: contextlib.ExitStack, sandbox_id: str, *, make_dir: bool = True) -> Path:
        """The owner lease of ``sandbox_id`` (a job's id, or a warm sandbox's), and its job dir."""
        s = self.settings
        s.locks_dir.mkdir(parents=True, exist_ok=True)
        owner_path = s.locks_dir / f"job-{sandbox_id}.lock"
        owner = take_own(owner_path)  # a reaper's or a leftover check's look holds it a moment
        if owner is None:
            raise SandboxError(f"job id {sandbox_id} is already in use")
        write_owner(owner)
        stack.callback(owner.release)
        stack.callback(_unlink, owner_path)
        s.jobs_dir.mkdir(parents=True, exist_ok=True)
        job_dir = s.jobs_dir / sandbox_id
        if make_dir:
            job_dir.mkdir(mode=0o711)
            stack.callback(remove_bundle, job_dir)
        return job_dir

    def _box(self, stack: contextlib.ExitStack, req: SandboxRequest, sandbox_id: str, job_dir: Path,
             scratch: Path, image: StoredImage, runtime: Runtime) -> Box:
        """A sandbox's host side on ``stack``: uid slot, disk, cgroup, the image held, rootfs, and
        the job's process (its image's Entrypoint and User) with its workspace owned by that user."""
        s = self.settings
        # lowest free slot first: its user namespace (for idmapping) is then usually cached
        slot, slot_lease = lease_uid_slot(s.uid_base, s.uid_slots, oci.ID_RANGE, legacy_dir=s.locks_dir,
                                          holder=f"/{cgroup_parent(s.instance_id)}/{sandbox_id}")
        stack.callback(slot_lease.release)
        userns = runtime.name != "runsc"
        uid_base = s.uid_base + slot * oci.ID_RANGE if userns else 0
        (job_dir / "slot").write_text(str(slot))
        # the runtime resolves <job>/rootfs and the bind sources as the job's root (host uid_base),
        # so the job dir must let it through; its group and 0710 keep every other local user out
        os.chown(job_dir, 0, uid_base)
        os.chmod(job_dir, 0o710)  # noqa: S103 - search for the job's group only, nothing for others
        disk = JobDisk(scratch, sandbox_id, req.limits.disk_bytes)
        stack.callback(disk.close)
        cg = JobCgroup(sandbox_id, memory_bytes=req.limits.memory_bytes, cpus=req.limits.cpus,
                       pids=req.limits.pids, parent=cgroup_parent(s.instance_id))
        stack.callback(cg.close)
        stack.enter_context(self.images.hold(image))  # no prune removes its layers while it runs
        rootfs = JobRootfs(job_dir, list(image.layer_stack()), disk.path, uid_base, oci.ID_RANGE,
                           s.run_dir, owner_uid=oci.STRICT_UID if req.profile == "strict" else None)
        stack.callback(rootfs.close)
        # the image's Entrypoint and User (worker/sandbox/image_process.py); the workspace is its user's
        process = job_process(req, image.config, str(rootfs.path))
        ws_uid = process.user.uid if process.user else oci.STRICT_UID if req.profile == "strict" else 0
        if process.user is not None:
            try:
                os.chown(rootfs.workspace, uid_base + ws_uid, uid_base + process.user.gid)
            except OSError as exc:
                raise SandboxError(f"cannot prepare the job's workspace: {exc}") from exc
        return Box(job_dir, uid_base, userns, disk, cg, rootfs, process, ws_uid)

    def _config(self, req: SandboxRequest, box: Box, process: JobProcess, image: StoredImage, runtime: Runtime,
                netns_path: str | None = None, resolv_conf: str | None = None,
                hosts_file: str | None = None) -> dict[str, Any]:
        """The OCI config of ``req`` run as ``process`` in ``box`` (and crun's compiled filter)."""
        user = process.user
        config = oci.build_spec(oci.SpecInputs(
            request=req if process.argv == req.argv else replace(req, argv=process.argv), rootfs=str(box.rootfs.path),
            workspace=str(box.rootfs.workspace), uid_base=box.uid_base, cgroups_path=box.cg.runtime_path,
            seccomp=self._seccomp, image_env=image.env, hostname="sandpit", nofile=_nofile(), userns=box.userns,
            netns_path=netns_path, resolv_conf=resolv_conf, hosts_file=hosts_file,
            user=(user.uid, user.gid) if user else None, home=user.home if user else None,
            groups=user.groups if user else (),
        ))
        if self.compiled_seccomp:
            self._filters.add(config, runtime)
        return config

    def _after_run(self, result: _JobDraft, req: SandboxRequest, end: RunEnd, box: Box, joblog: JobLog,
                   log_path: Path, sink: OutputSink | None, cache_paths: tuple[str, ...],
                   report_paths: tuple[str, ...]) -> None:
        """The verdict and usage of a run that ended ``end``; the files it keeps."""
        _judge(result, end, box.cg.usage(), box.disk)
        if req.network == "none" and result.verdict.status is Status.FAILED:
            _hint_offline(result, joblog, log_path, sink)
        keep = bool(req.artifacts) and keeps_artifacts(req.artifacts_when, result.verdict.status)
        if keep or cache_paths or report_paths:
            box.cg.kill_all()  # files are read only once nothing of the job can still write
            from worker.sandbox.artifacts import Caps, collect_artifacts

            caps = Caps(req.limits.artifact_file_bytes, req.limits.artifact_count,
                        req.limits.artifact_total_bytes)
            workspace = box.rootfs.workspace
            if keep:
                kept, refused = collect_artifacts(
                    workspace, req.artifacts, self.artifact_store, caps, req.artifact_exclude)
                result.artifacts, result.rejected_artifacts = tuple(kept), tuple(refused)
            if cache_paths:
                cached, _refused = collect_artifacts(workspace, cache_paths, self.artifact_store, caps)
                result.cache_files = tuple(cached)
            if report_paths:  # test reports are kept whatever the job's outcome (as GitLab does)
                reports, _refused = collect_artifacts(workspace, report_paths, self.artifact_store, caps)
                result.report_files = tuple(reports)

    # -- warm sandboxes (worker/sandbox/warm.py) -----------------------------------------
    def _make_warm(self, req: SandboxRequest, image: StoredImage, argv0: str) -> None:
        """One warm sandbox for jobs like ``req`` into the pool: never a cost to a job (a failure is
        logged and leaves nothing)."""
        from worker.sandbox.warm import box_key, launcher_for, start_warm

        assert self.warm is not None
        sandbox_id = f"warm-{os.urandom(6).hex()}"
        try:
            with contextlib.ExitStack() as stack:
                runtime = self.runtime(req.runtime).for_network(req.network)
                job_dir = self._own(stack, sandbox_id)
                # nothing of the job's own: the next job's command and variables are set as it starts
                base = replace(req, argv=(argv0,), env=(), artifacts=())
                box = self._box(stack, base, sandbox_id, job_dir, self.scratch(), image, runtime)
                process = replace(box.process, argv=(launcher_for(image.rootfs, argv0), "-s"))
                config = self._config(base, box, process, image, runtime)
                write_private(job_dir / "config.json", json.dumps(config).encode())
                container_id = f"sandpit-{sandbox_id}"
                stack.callback(_delete_container, runtime, container_id)
                made = start_warm(stack, runtime, box, process, argv0, config, container_id,
                                  box_key(image.key, runtime.name, req))
                made.stack = stack.pop_all()  # the sandbox's own from here: the pool's, or closed now
            if not self.warm.add(made):
                made.close()
        except Exception as exc:
            _log_info("no warm sandbox made: %s", exc)

    def _take_warm(self, req: SandboxRequest, image: StoredImage,
                   runtime: Runtime) -> tuple[WarmSandbox, JobProcess] | tuple[None, None]:
        """A warm sandbox this job can start in, its launcher fed the job's command and variables,
        and the job's process; Nones: the job is made from the start (none waits, or none matches)."""
        from worker.sandbox.warm import box_key

        assert self.warm is not None
        while (warm := self.warm.take(box_key(image.key, runtime.name, req))) is not None:
            try:
                process = job_process(req, image.config, str(warm.box.rootfs.path))
                config = self._config(req, warm.box, process, image, runtime)
                if warm.feed_job(config, process):
                    return warm, process
            except Exception as exc:
                _log_info("warm sandbox %s not used: %s", warm.container_id, exc)
            warm.close()
        return None, None

    def _services(self, stack: contextlib.ExitStack, req: SandboxRequest, images: list[StoredImage], job_id: str,
                  job_dir: Path, disk: JobDisk, cg: JobCgroup, uid_base: int, runtime: Runtime,
                  netns_path: str | None, resolv_conf: str | None, secrets: tuple[str, ...]) -> JobServices:
        """The job's services, started in its network namespace (for ``none``, a loopback-only one
        made here that the job joins too) with its /etc/hosts; the stack removes them after the job's
        container, before its cgroup, rootfs and disk (``worker/sandbox/services/group.py``)."""
        from worker.sandbox.services.container import ServicePlace
        from worker.sandbox.services.group import JobServices, ServiceNetwork, service_hosts
        from worker.sandbox.services.logs import debug_services

        for image in images:
            stack.enter_context(self.images.hold(image))
        netns_fd = None
        if netns_path is None:
            try:
                shared = ServiceNetwork()
            except OSError as exc:  # a NetworkError is a SandboxError already (infra_error)
                raise SandboxError(f"cannot give the job and its services a network: {exc}") from exc
            stack.callback(shared.close)
            netns_path, netns_fd = shared.path, shared.fd
        hosts = service_hosts(job_dir, req.services)
        stack.callback(hosts.close)
        place = ServicePlace(
            job_id=job_id, job_dir=job_dir, disk_dir=disk.path, cgroup=cg, uid_base=uid_base,
            run_dir=self.settings.run_dir, runtime=runtime, seccomp=self._seccomp, profile=req.profile,
            nofile=_nofile(), netns_path=netns_path, resolv_conf=resolv_conf, hosts_file=hosts.path)
        return stack.enter_context(JobServices(req.services, images, place, self.logs_dir, req.limits.log_bytes,
                                               secrets, debug_services(req.env), netns_fd))

    def _egress(self, stack: contextlib.ExitStack, job_id: str) -> JobEgress:
        """The job's network namespace with a veth on sandpit's bridge (``network/egress.py``: a ready
        one from the pool, or one begun on another thread while disk, cgroup and rootfs are made here).
        The stack closes it after the container is gone, whatever happens in between. Its errors (an
        unusable host netns, a refused pool directory, a bridge that cannot be made) are said as the
        job's network failing, so the job ends ``infra_error``."""
        from worker.sandbox.network.egress import open_for_job

        try:
            return stack.enter_context(open_for_job(job_id, self.settings, self._network_settings,
                                                    self.host_network))
        except Exception as exc:
            from worker.sandbox.network.errors import NetworkError

            if isinstance(exc, (OSError, NetworkError)):
                raise SandboxError(f"cannot give the job a network: {exc}") from exc
            raise

    def _egress_ready(self, egress: JobEgress, stack: contextlib.ExitStack, job_dir: Path) -> tuple[str, str]:
        """The job's netns path and the resolv.conf to bind at /etc/resolv.conf.

        resolv.conf lives on a tmpfs of its own at ``<job>/resolv``: a bind of a file of the host's
        filesystem shows the job, in its mountinfo, that file's host path (state dir and job id); a
        file of a fresh tmpfs shows as ``/resolv.conf`` on ``tmpfs``. (A sealed memfd would need no
        mount, but crun cannot stat ``/proc/<pid>/fd/<n>`` from the job's user namespace and the
        kernel refuses to bind a file of its internal shm mount: measured, crun 1.8 and runc 1.1.)"""
        try:
            net = egress.ready()
        except Exception as exc:
            from worker.sandbox.network.errors import NetworkError

            if isinstance(exc, (OSError, NetworkError)):
                raise SandboxError(f"cannot give the job a network: {exc}") from exc
            raise
        from worker.sandbox.mounts import MS_NODEV, MS_NOSUID, mount, umount

        folder = os.path.join(job_dir, "resolv")
        os.mkdir(folder, 0o755)
        try:
            mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV | _MS_NOEXEC, "size=16k,nr_inodes=8,mode=0755")
        except OSError as exc:
            raise SandboxError(f"cannot give the job its resolv.conf: {exc}") from exc
        stack.callback(umount, folder)
        resolv = os.path.join(folder, "resolv.conf")
        fd = os.open(resolv, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask: the job's user must read it
            os.write(fd, net.resolv_conf)
        finally:
            os.close(fd)
        return net.netns_path, resolv


def _judge(result: _JobDraft, end: RunEnd, usage: Usage, disk: JobDisk) -> None:
    """The job's usage and verdict (worker/sandbox/verdict.py's rule); the exit code and signal
    unless the runtime itself failed."""
    result.usage = JobUsage(cpu_s=usage.cpu_s, memory_peak_bytes=usage.memory_peak_bytes, pids_peak=usage.pids_peak)
    result.verdict = classify_end(end.exit_code, end.reason, end.runtime_error, oom_kills=usage.oom_kills,
                                  pids_limit_hits=usage.pids_limit_hits,
                                  disk_quota_hit=lambda failed: disk.quota_hit(job_failed=failed))
    if not end.runtime_error:
        result.exit_code, result.signal = end.exit_code, end.signal


def _hint_offline(result: _JobDraft, joblog: JobLog, log_path: Path, sink: OutputSink | None) -> None:
    """A failed ``network: none`` job whose log ends in a failed lookup or connection gets a hint
    naming ``network: egress`` in its message, at the end of its log and to its live reader
    (network/hint.py)."""
    from worker.sandbox.network.hint import offline_hint, read_tail

    joblog.close()  # idempotent: flushes the file, so its tail is all there
    hint = offline_hint(read_tail(log_path))
    if hint is None:
        return
    said = result.verdict.message
    result.verdict = replace(result.verdict, message=f"{said}; {hint}" if said else hint)
    with open(log_path, "ab") as f:
        f.write(json.dumps({"t": round(time.monotonic() - joblog.started, 6), "s": "sys",
                            "d": f"\n{hint}\n"}).encode() + b"\n")
    if sink is not None:  # the log's delivery is finished: this is the reader's last line
        with contextlib.suppress(Exception):  # a reader that went away misses only the hint
            sink("sys", f"\n{hint}\n".encode())


def _live_notes(kept: list[str], sink: OutputSink | None) -> Callable[[str], None]:
    """A progress callback (called from a pull's threads too) that keeps each line and hands it to
    the live reader at once: a long pull of ``sandpit exec --image`` is not silent."""
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            kept.append(line)
            if sink is not None:
                with contextlib.suppress(Exception):
                    sink("sys", f"[sandpit] {line}\n".encode())
    return say


def _write_notes(log_path: Path, lines: tuple[str, ...], sink: OutputSink | None) -> None:
    """sandpit's own lines before the job's output (an image pull's progress): in the log file, which
    the job's log then continues, and to the live reader."""
    if not lines:
        return
    data = "".join(f"[sandpit] {line}\n" for line in lines)
    with open(log_path, "ab") as f:
        f.write(json.dumps({"t": 0.0, "s": "sys", "d": data}).encode() + b"\n")
    if sink is not None:
        with contextlib.suppress(Exception):  # a reader that went away misses only these lines
            sink("sys", data.encode())


_MS_NOEXEC = 0x8


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _nofile() -> int:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return oci.NOFILE if hard == resource.RLIM_INFINITY else min(oci.NOFILE, hard)


def _delete_container(runtime: Runtime, container_id: str) -> None:
    if runtime.has_state(container_id):
        runtime.delete(container_id)
        runtime.forget(container_id)


def install_signal_cancel(cancel: threading.Event) -> None:
    """Ctrl-C / SIGTERM / SIGHUP stop the job (and so tear it down) instead of killing sandpit."""
    def handler(signum: int, _frame: object) -> None:
        cancel.set()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


