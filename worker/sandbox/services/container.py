"""One service container: its rootfs, its ``config.json``, its runtime process and its teardown.

Made as a job's container is (``worker/sandbox/spec.py`` writes the same hardened document: user
namespace with the job's uid range, seccomp, the profile's capabilities, masked /proc, fresh /dev,
no host mounts), with what makes it a service: the image's Entrypoint and Cmd (or the service's
``entrypoint``/``command``), its User and WorkingDir, the host name of its first alias, the job's
network namespace and /etc/hosts, and the cgroup ``<job cgroup>/svc<N>``. Its bundle is
``<job dir>/svc<N>`` and its upper dir ``<job disk>/svc<N>``: under the job's own objects.

What it runs and as whom is decided as for the job, by :mod:`worker.sandbox.image_process`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

from pipelines.record import record
from worker import TYPE_CHECKING
from worker.errors import InvalidRequest, SandboxError
from worker.sandbox import spec as oci
from worker.sandbox.bundle import remove_bundle, write_private
from worker.sandbox.cgroups import JobCgroup, remove_job_cgroups
from worker.sandbox.image_process import image_user, service_argv
from worker.sandbox.images import StoredImage
from worker.sandbox.request import SandboxRequest, ServiceRequest, workdir_problems
from worker.sandbox.rootfs import JobRootfs
from worker.sandbox.runtime import Runtime, spawn
from worker.sandbox.services.naming import container_id, part_name

if TYPE_CHECKING:
    from typing import Any


@record(frozen=True)
class ServicePlace:
    """Where a job's services live, from the engine: the job's objects they are made under."""

    job_id: str
    job_dir: Path
    disk_dir: Path
    cgroup: JobCgroup
    uid_base: int
    run_dir: Path
    runtime: Runtime
    seccomp: dict[str, Any]
    profile: str
    nofile: int
    netns_path: str
    resolv_conf: str | None
    hosts_file: str


class ServiceContainer:
    """Service ``index`` of a job: made (rootfs, config.json) by the constructor, run by
    ``start()``, killed by ``kill()``, removed by ``close()`` (idempotent; its runtime process is
    reaped by whoever reads its output, ``logs.OutputPump``)."""

    def __init__(self, index: int, request: ServiceRequest, image: StoredImage, place: ServicePlace) -> None:
        self.index = index
        self.request = request
        self.alias = request.aliases[0]
        self.place = place
        self.id = container_id(place.job_id, index)
        self.dir = place.job_dir / part_name(index)
        self.rootfs: JobRootfs | None = None
        self.started = False
        self._closed = False
        try:
            self.dir.mkdir(mode=0o710)
            # as the job dir: the runtime resolves the bundle as the container's root (host uid_base)
            os.chown(self.dir, 0, place.uid_base)
            os.chmod(self.dir, 0o710)  # noqa: S103 - search for the job's group only, nothing for others
            upper = place.disk_dir / part_name(index)
            upper.mkdir()
            self.rootfs = JobRootfs(self.dir, list(image.layer_stack()), upper, place.uid_base, oci.ID_RANGE,
                                    place.run_dir)
            self.config = self._config(image)
            write_private(self.dir / "config.json", json.dumps(self.config).encode())
        except InvalidRequest as exc:
            self.close()
            raise InvalidRequest(f"service {self.alias} ({request.image}): {exc}") from None
        except OSError as exc:
            self.close()
            raise SandboxError(f"cannot make service {self.alias} ({request.image}): {exc}") from exc
        except BaseException:
            self.close()
            raise

    def _config(self, image: StoredImage) -> dict[str, Any]:
        assert self.rootfs is not None
        config = image.config
        argv = service_argv(self.request.entrypoint, self.request.command, config.entrypoint if config else (),
                            config.cmd if config else ())
        if not argv:
            raise InvalidRequest("it has nothing to run: its image declares no Entrypoint or Cmd; give it a "
                                 "`command:`")
        workdir = (config.workdir if config else "") or "/"
        if workdir_problems(workdir):
            raise InvalidRequest(f"its image's WorkingDir cannot be used: {workdir_problems(workdir)[0]}")
        user = image_user(str(self.rootfs.path), config.user if config else "")
        place = self.place
        request = SandboxRequest(argv=argv, image=self.request.image, env=self.request.env, workdir=workdir,
                                 profile="strict" if place.profile == "strict" else "default")
        return oci.build_spec(oci.SpecInputs(
            request=request, rootfs=str(self.rootfs.path), workspace=str(self.rootfs.workspace),
            uid_base=place.uid_base,
            cgroups_path=f"/{place.cgroup.parent}/{place.cgroup.name}/{part_name(self.index)}",
            seccomp=place.seccomp, image_env=image.env, hostname=self.alias if len(self.alias) <= 63 else "service",
            nofile=place.nofile, userns=True, netns_path=place.netns_path, resolv_conf=place.resolv_conf,
            hosts_file=place.hosts_file, user=(user.uid, user.gid), home=user.home, groups=user.groups,
        ))

    def start(self) -> tuple[int, int, int]:
        """Start the runtime in the foreground: (its pid, the read ends of stdout and stderr)."""
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = spawn(self.place.runtime.run_argv(self.dir, self.id, self.dir / "runtime.log"), out_w, err_w,
                        self.place.runtime.run_env())
        except OSError as exc:
            for fd in (out_r, err_r):
                os.close(fd)
            raise SandboxError(f"cannot start service {self.alias}: {exc}") from exc
        finally:
            os.close(out_w)
            os.close(err_w)
        self.started = True
        return pid, out_r, err_r

    def runtime_log(self) -> Path:
        return self.dir / "runtime.log"

    def kill(self) -> None:
        """SIGKILL every process of the service (from its cgroup, without asking the runtime)."""
        if not self.started:
            return
        base = self.place.cgroup.dirs.get("unified") or self.place.cgroup.dirs.get("pids")
        if base is None:
            return
        group = base / part_name(self.index)
        kill_file = group / "cgroup.kill"
        if kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1")
                return
        for _ in range(50):
            try:
                pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
            except OSError:
                return
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        """Remove the container's runtime state, rootfs, cgroup and bundle (its processes are dead)."""
        if self._closed:
            return
        self._closed = True
        runtime = self.place.runtime
        try:
            if self.started and runtime.has_state(self.id):
                runtime.delete(self.id)
                runtime.forget(self.id)
        finally:
            try:
                if self.rootfs is not None:
                    self.rootfs.close()
            finally:
                cg = self.place.cgroup
                with contextlib.suppress(OSError):
                    remove_job_cgroups(f"{cg.name}/{part_name(self.index)}", cg.root, fast=True, parent=cg.parent)
                remove_bundle(self.dir)
