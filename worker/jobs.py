"""From a planned pipeline job to what the sandbox runs: command, image, limits, environment (pure).

The job's script runs as GitLab Runner runs it: under the image's bash when it has one (with
``errexit`` and ``pipefail``), else ``/bin/sh`` with ``errexit`` (worker/sandbox/shell.py finds which,
once per image); every command echoed as ``$ command``; the first failing command fails the job;
``after_script`` runs afterwards in a fresh shell whatever happened, with ``CI_JOB_STATUS`` set to
``success`` or ``failed`` (its own failures do not change the result).

>>> from pipelines.language.model import Job, Loc
>>> "$ make" in job_script(Job(name="b", stage="build", loc=Loc("f", 1, 1), script=("make",)))
True
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.language.model import Job, Service
from worker.sandbox.request import Limits, SandboxRequest, ServiceRequest

MiB = 1024 * 1024


@dataclass(frozen=True)
class JobDefaults:
    """What a pipeline job gets when its ``sandbox:`` block does not say."""

    memory_bytes: int = 2048 * MiB
    cpus: float = 1.0
    pids: int = 1024
    disk_bytes: int = 4096 * MiB
    timeout_s: float = 3600.0
    log_bytes: int = 16 * MiB
    image: str = "debian"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _commands(lines: tuple[str, ...]) -> str:
    out = []
    for line in lines:
        shown = line.splitlines()[0] if line.strip() else line
        if len(line.splitlines()) > 1:
            shown += " # collapsed multi-line command"
        out.append(f"printf '%s\\n' {_quote('$ ' + shown)}")
        out.append(line)
    return "\n".join(out)


def job_script(job: Job, shell: str = "/bin/sh") -> str:
    """The shell program for ``job``: before_script + script, then after_script.

    bash gets ``pipefail`` (``false | true`` fails the job, as on GitLab); sh gets errexit only.
    Without after_script everything runs in one shell: no extra fork on the hot path.

    >>> from pipelines.language.model import Job, Loc
    >>> job_script(Job(name="b", stage="s", loc=Loc("f", 1, 1), script=("make",)), "/bin/bash").splitlines()[0]
    'set -eo pipefail'
    """
    main = _commands(job.script) or ":"
    prologue = "set -eo pipefail" if shell.endswith("/bash") else "set -e"
    if not job.after_script:
        return f"{prologue}\n{main}\n"
    after = _commands(job.after_script)
    return (
        f"( {prologue}\n{main}\n)\n__sandpit_rc=$?\n"
        "if [ $__sandpit_rc -eq 0 ]; then CI_JOB_STATUS=success; else CI_JOB_STATUS=failed; fi\n"
        "export CI_JOB_STATUS\n"
        "printf '%s\\n' 'Running after_script'\n"
        f"( {prologue}\n{after}\n) || printf '%s\\n' 'after_script failed (ignored)'\n"
        "exit $__sandpit_rc\n"
    )


def image_name(job: Job, default: str) -> str:
    """The image reference the job asks for, as written (``python:3.12`` stays ``python:3.12``).
    Which recipe honours it, if any, is decided in one place: ``ImageStore.resolve``; nothing here
    maps one reference to another.

    >>> image_name(Job(name="j", stage="s", loc=__import__("pipelines.language.model",
    ...     fromlist=["Loc"]).Loc("f", 1, 1)), "debian")
    'debian'
    """
    return default if job.image is None else job.image.name


def request_for(job: Job, *, defaults: JobDefaults = JobDefaults(), extra_env: tuple[tuple[str, str], ...] = (),
                shell: str = "/bin/sh") -> SandboxRequest:
    """What the sandbox runs for ``job``, under ``shell`` (the image's, from ``shell_for_image``).
    Which recipe honours the job's image is the store's decision (``ImageStore.resolve``)."""
    sb = job.sandbox
    limits = Limits(
        memory_bytes=sb.memory_bytes or defaults.memory_bytes,
        cpus=sb.cpus or defaults.cpus,
        pids=sb.pids or defaults.pids,
        disk_bytes=sb.disk_bytes or defaults.disk_bytes,
        timeout_s=float(job.timeout_seconds or defaults.timeout_s),
        log_bytes=sb.log_bytes or defaults.log_bytes,
    )
    env = tuple(job.variables) + extra_env
    artifacts = job.artifacts.paths if job.artifacts is not None else ()
    exclude = job.artifacts.exclude if job.artifacts is not None else ()
    when = job.artifacts.when if job.artifacts is not None else "on_success"
    return SandboxRequest(
        argv=(shell, "-c", job_script(job, shell)),
        image=image_name(job, defaults.image),
        env=env,
        network="egress" if sb.network == "egress" else "none",
        runtime=sb.runtime,
        profile="strict" if sb.profile == "strict" else "default",
        limits=limits,
        artifacts=artifacts,
        artifact_exclude=exclude,
        artifacts_when=when,
        services=tuple(service_request(service, env) for service in job.services),
        entrypoint=job.image.entrypoint if job.image is not None else None,
    )


def service_request(service: Service, job_env: tuple[tuple[str, str], ...]) -> ServiceRequest:
    """What the sandbox runs for one of the job's services: its environment is the job's
    variables (GitLab passes them all to services) and then the service's own; its host names
    are its aliases and the ones GitLab Runner derives from the image name.

    >>> service_request(Service("postgres:16", alias="db", variables=(("A", "2"),)), (("A", "1"),))
    ServiceRequest(image='postgres:16', aliases=('db', 'postgres'), entrypoint=None, command=None, \
env=(('A', '1'), ('A', '2')), pull_policy=None)
    """
    from pipelines.language.services import service_aliases  # jobs without services never load it

    return ServiceRequest(image=service.name, aliases=service_aliases(service), entrypoint=service.entrypoint,
                          command=service.command, env=job_env + service.variables,
                          pull_policy=service.pull_policy)
