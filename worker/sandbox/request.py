"""What a job asks of its sandbox, validated before anything is created (pure).

>>> req = SandboxRequest(argv=("true",))
>>> req.limits.memory_bytes
268435456
"""

from __future__ import annotations

import re

from pipelines.record import field, record
from pipelines.references import reference_problem
from worker import TYPE_CHECKING
from worker.errors import InvalidRequest

if TYPE_CHECKING:
    from typing import Literal

    Network = Literal["none", "egress"]
    Profile = Literal["default", "strict"]
RUNTIMES = ("crun", "runc", "runsc")
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"  # compiled by re on first use

MiB = 1024 * 1024


@record(frozen=True)
class Limits:
    memory_bytes: int = 256 * MiB
    cpus: float = 1.0
    pids: int = 128
    disk_bytes: int = 1024 * MiB
    timeout_s: float = 30.0
    grace_s: float = 2.0
    log_bytes: int = 4 * MiB
    # artifact caps
    artifact_file_bytes: int = 64 * MiB
    artifact_count: int = 1000
    artifact_total_bytes: int = 256 * MiB


@record(frozen=True)
class ServiceRequest:
    """A container to run beside the job in its network namespace (``worker/sandbox/services``):
    the image, the host names the job reaches it by, its command (``entrypoint`` and ``command``
    replace the image's Entrypoint and Cmd as ``docker run`` does), its environment (the job's,
    then its own) and the pull policies tried in order (None: the worker's default)."""

    image: str
    aliases: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    command: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    pull_policy: tuple[str, ...] | None = None


#: at most this many services beside one job (as the pipeline language allows)
MAX_SERVICES = 16


@record(frozen=True)
class SandboxRequest:
    argv: tuple[str, ...]
    image: str = "debian"
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = "/workspace"
    network: Network = "none"
    runtime: str | None = None
    profile: Profile = "default"
    limits: Limits = field(default_factory=Limits)
    artifacts: tuple[str, ...] = ()
    #: GitLab's artifacts:exclude and artifacts:when (on_success, on_failure, always); `sandpit exec
    #: --artifact` keeps them whatever the result
    artifact_exclude: tuple[str, ...] = ()
    artifacts_when: str = "always"
    services: tuple[ServiceRequest, ...] = ()
    #: how long the job waits for its services' ports before it starts anyway (GitLab Runner's
    #: ``wait_for_services_timeout``); None: the operator's ``SANDPIT_SERVICE_WAIT``
    services_timeout_s: float | None = None
    #: ``image:entrypoint``: replaces the image's Entrypoint, which ``argv`` is given to as arguments
    #: (``("",)``: none; None or empty: the image's; worker/sandbox/image_process.py)
    entrypoint: tuple[str, ...] | None = None


ARTIFACTS_WHENS = ("on_success", "on_failure", "always")


def keeps_artifacts(when: str, status: str) -> bool:
    """Whether a job that ended ``status`` keeps its artifacts under ``artifacts:when``.

    >>> keeps_artifacts("on_success", "failed"), keeps_artifacts("on_failure", "failed")
    (False, True)
    >>> keeps_artifacts("always", "failed"), keeps_artifacts("always", "cancelled")
    (True, False)
    """
    if status not in ("succeeded", "failed"):
        return False  # cancelled, or sandpit's own error: nothing of the job is trusted to be whole
    return when == "always" or (when == "on_success") == (status == "succeeded")


def validate_request(req: SandboxRequest) -> list[str]:
    """Every reason the request is refused, as sentences (empty when it is fine).

    >>> validate_request(SandboxRequest(argv=()))
    ['no command given: put the command after --']
    """
    problems: list[str] = []
    if not req.argv:
        problems.append("no command given: put the command after --")
    if any("\0" in arg for arg in (*req.argv, *(req.entrypoint or ()))):
        problems.append("the command or entrypoint contains a NUL byte")
    for name, value in req.env:
        if not re.match(_ENV_NAME, name):
            problems.append(f"environment name {name!r} is not valid: use letters, digits and _")
        if "\0" in value:
            problems.append(f"environment value of {name} contains a NUL byte")
    problems.extend(workdir_problems(req.workdir))
    if (image_problem := reference_problem(req.image)) is not None:
        problems.append(image_problem)
    if req.network not in ("none", "egress"):
        problems.append(f"network {req.network!r} is not one of none, egress")
    if req.profile not in ("default", "strict"):
        problems.append(f"profile {req.profile!r} is not one of default, strict")
    if req.runtime is not None and req.runtime not in RUNTIMES:
        problems.append(f"runtime {req.runtime!r} is not one of {', '.join(RUNTIMES)}")
    lim = req.limits
    if lim.memory_bytes < 8 * MiB:
        problems.append("memory must be at least 8M")
    if lim.pids < 4:
        problems.append("pids must be at least 4")
    if lim.disk_bytes < 16 * MiB:
        problems.append("disk must be at least 16M")
    if lim.timeout_s <= 0:
        problems.append("timeout must be positive")
    problems.extend(artifact_pattern_problems(req.artifacts))
    problems.extend(artifact_pattern_problems(req.artifact_exclude))
    if req.artifacts_when not in ARTIFACTS_WHENS:
        problems.append(f"artifacts when {req.artifacts_when!r} is not one of {', '.join(ARTIFACTS_WHENS)}")
    if req.services:
        problems.extend(service_problems(req.services))
        if req.services_timeout_s is not None and req.services_timeout_s < 0:
            problems.append("the services' wait must not be negative")
    return problems


def service_problems(services: tuple[ServiceRequest, ...]) -> list[str]:
    """Every reason the services are refused: an image that is no reference, a host name that
    could break the job's /etc/hosts, an environment the job could not have, NUL in a command.

    >>> service_problems((ServiceRequest("Postgres", aliases=("db",)),))[0][:40]
    "service Postgres: 'Postgres' is not an i"
    >>> service_problems((ServiceRequest("redis", aliases=("a b",)),))
    ["service redis: host name 'a b' is not valid: use letters, digits and '.', '_', '-'"]
    """
    from pipelines.language.services import is_alias  # only jobs with services pay for the import

    problems: list[str] = []
    if len(services) > MAX_SERVICES:
        problems.append(f"{len(services)} services; at most {MAX_SERVICES} run beside one job")
    for service in services:
        what = f"service {service.image[:80]}"
        if (image_problem := reference_problem(service.image)) is not None:
            problems.append(f"{what}: {image_problem}")
        if not service.aliases:
            problems.append(f"{what}: it has no host name: give it an alias")
        for alias in service.aliases:
            if not is_alias(alias):
                problems.append(f"{what}: host name {alias[:80]!r} is not valid: use letters, digits and "
                                "'.', '_', '-'")
        for name, value in service.env:
            if not re.match(_ENV_NAME, name):
                problems.append(f"{what}: environment name {name!r} is not valid: use letters, digits and _")
            if "\0" in value:
                problems.append(f"{what}: environment value of {name} contains a NUL byte")
        if any("\0" in arg for arg in (*(service.entrypoint or ()), *(service.command or ()))):
            problems.append(f"{what}: its entrypoint or command contains a NUL byte")
    return problems


_BANNED_TOPS = ("proc", "sys", "dev")


def workdir_problems(workdir: str) -> list[str]:
    """A working directory must be absolute, without ``..``, printable, and never under /proc,
    /sys or /dev in any spelling. Judged component by component, not on ``normpath``'s text:
    POSIX lets ``normpath`` keep a leading ``//``, so ``//proc/self`` would not start with "/proc".

    >>> workdir_problems("/proc/self")
    ['workdir /proc/self is under /proc: choose a directory such as /workspace']
    >>> workdir_problems("//proc/self")
    ["workdir '//proc/self' is under /proc: choose a directory such as /workspace"]
    """
    if not workdir.startswith("/"):
        return [f"workdir {workdir!r} must be an absolute path such as /workspace"]
    if "\0" in workdir:
        return ["workdir contains a NUL byte"]
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in workdir):
        return [f"workdir {workdir!r} contains a control character"]
    if len(workdir.encode("utf-8", "surrogateescape")) > 4096:
        return ["workdir is longer than 4096 bytes"]
    parts = [part for part in workdir.split("/") if part not in ("", ".")]
    if ".." in parts:
        return [f"workdir {workdir!r} must not contain '..'"]
    if parts and parts[0] in _BANNED_TOPS:
        shown = workdir if workdir == "/" + "/".join(parts) else repr(workdir)
        return [f"workdir {shown} is under /{parts[0]}: choose a directory such as /workspace"]
    return []


def artifact_pattern_problems(patterns: tuple[str, ...]) -> list[str]:
    """Artifact globs are relative to the workspace and never climb out of it.

    >>> artifact_pattern_problems(("dist/*", "../etc/passwd", "/etc/shadow"))
    ["artifact pattern '../etc/passwd' contains '..': name files inside the workspace", \
"artifact pattern '/etc/shadow' is absolute: write it relative to the workspace"]
    """
    problems = []
    for pattern in patterns:
        if not pattern or "\0" in pattern:
            problems.append(f"artifact pattern {pattern!r} is empty or contains a NUL byte")
        elif pattern.startswith("/"):
            problems.append(f"artifact pattern {pattern!r} is absolute: write it relative to the workspace")
        elif ".." in pattern.split("/"):
            problems.append(f"artifact pattern {pattern!r} contains '..': name files inside the workspace")
    return problems


def require_valid(req: SandboxRequest) -> None:
    problems = validate_request(req)
    if problems:
        raise InvalidRequest("; ".join(problems))
