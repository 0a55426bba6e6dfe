"""The job result record: how one attempt of a job ended, the contract the CLI, the API and the
database share (pure values).

``sandpit exec --json`` prints it, ``sandpit run --json`` lists one per job, the worker stores it
(``finish_job`` keeps it as the job's ``result``) and the API serves its fields. Its JSON is the
shape the README documents, key for key and in that order::

    {"name", "status", "reason", "exit_code", "signal", "attempt", "duration_s", "started_at",
     "finished_at", "usage": {"cpu_s", "memory_peak_bytes", "pids_peak"},
     "artifacts": [{"path", "size", "sha256"}], "rejected_artifacts": [{"path", "why"}],
     "job_id", "runtime", "log", "message"}

:meth:`JobRecord.to_json` is the one place that shape is written (a test holds it to the README's
example). ``status`` and ``reason`` are :class:`Status` and :class:`Reason`, string enums, so the
JSON carries the same words as before and a record compares equal to them (``Status.FAILED ==
"failed"``). A record is made whole: by the engine for a job that ran (``Engine.run``), or by
:meth:`JobRecord.not_run` for one that ended before its sandbox was made (a refused request, a
failure around the engine), from a :class:`Verdict`.

Declared with :func:`pipelines.record.record`, not ``dataclasses``: this module is on the start-up
path of every ``sandpit exec``.

>>> rec = JobRecord.not_run("build", Verdict(Status.FAILED, Reason.INVALID_SPEC, "memory must be at least 8M"))
>>> rec.status == "failed", rec.reason is Reason.INVALID_SPEC
(True, True)
>>> sorted(rec.to_json()["usage"].items())
[('cpu_s', 0.0), ('memory_peak_bytes', 0), ('pids_peak', 0)]
"""

from __future__ import annotations

from enum import StrEnum

from pipelines.record import record, replace

TYPE_CHECKING = False  # typing costs ms on exec's start-up path (see worker/__init__.py)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = ["JobRecord", "JobUsage", "Reason", "RefusedArtifact", "ServiceRecord", "Status", "StoredArtifact", "Verdict"]


class Status(StrEnum):
    """How a job (an attempt of it) ended. ``error`` is sandpit's failure, never the job's fault;
    ``failed`` is the job's own code failing or hitting a limit; ``skipped`` a job the run did not
    start (a ``needs`` that failed, a rule)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ERROR = "error"
    SKIPPED = "skipped"


class Reason(StrEnum):
    """Why a job did not succeed: one word per cause, each limit its own (None when it succeeded)."""

    EXIT_CODE = "exit_code"  # its command exited non-zero
    OOM = "oom"
    PIDS_LIMIT = "pids_limit"
    TIMEOUT = "timeout"
    DISK_QUOTA = "disk_quota"
    LOG_LIMIT = "log_limit"
    CANCELLED = "cancelled"
    WORKER_LOST = "worker_lost"  # its worker stopped renewing the job's lease
    INFRA_ERROR = "infra_error"  # sandpit could not run it (status error)
    INVALID_SPEC = "invalid_spec"  # its request was refused before anything started
    DEPENDENCY_FAILED = "dependency_failed"


@record(frozen=True)
class Verdict:
    """A job's end without the rest of its record: what ``job_outcome`` makes of an exception and
    ``classify_end`` of a finished container."""

    status: Status
    reason: Reason | None
    message: str | None = None


@record(frozen=True)
class JobUsage:
    """What the job's cgroup used: CPU seconds, the memory high-water mark, the most processes."""

    cpu_s: float = 0.0
    memory_peak_bytes: int = 0
    pids_peak: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"cpu_s": self.cpu_s, "memory_peak_bytes": self.memory_peak_bytes, "pids_peak": self.pids_peak}


@record(frozen=True)
class StoredArtifact:
    """A file of the job's workspace kept in the content-addressed store, under its sha256."""

    path: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@record(frozen=True)
class RefusedArtifact:
    """A path the artifact patterns named that was not kept, and why (a symlink, a cap, ...)."""

    path: str
    why: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "why": self.why}


@record(frozen=True)
class ServiceRecord:
    """One of the job's ``services:``: its image, its first host name, its own log (its output is
    not in the job's unless ``CI_DEBUG_SERVICES``), and whether its port opened before the job
    started (None: it exposes no port, so it was not waited for), after how long. ``log_path``
    None: its log is not kept (a delivery the API refused)."""

    image: str
    alias: str
    log_path: str | None
    ready: bool | None = None
    waited_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.image, "alias": self.alias, "log": self.log_path, "ready": self.ready,
                "waited_s": self.waited_s}


@record(frozen=True)
class JobRecord:
    """One attempt's result. ``log_path`` is written as ``log``. ``cache_files`` (what the job's
    ``cache: paths`` named, stored for the cache) and ``report_files`` (what its
    ``artifacts:reports`` named, kept whatever the outcome) are the worker's, not part of the JSON."""

    name: str
    status: Status
    reason: Reason | None
    exit_code: int | None = None
    signal: int | None = None
    attempt: int = 1
    duration_s: float = 0.0
    started_at: str | None = None
    finished_at: str | None = None
    usage: JobUsage = JobUsage()
    artifacts: tuple[StoredArtifact, ...] = ()
    rejected_artifacts: tuple[RefusedArtifact, ...] = ()
    job_id: str | None = None
    runtime: str | None = None
    log_path: str | None = None
    message: str | None = None
    #: the summary of its ``artifacts:reports:junit`` files (``worker.junit.TestReport.as_dict``), written
    #: as ``tests`` after the documented keys; None (and no key) for a job without report globs
    tests: Mapping[str, Any] | None = None
    cache_files: tuple[StoredArtifact, ...] = ()
    report_files: tuple[StoredArtifact, ...] = ()
    #: the job's services, written as ``services`` after the documented keys (no key without services)
    services: tuple[ServiceRecord, ...] = ()

    @classmethod
    def not_run(cls, name: str, verdict: Verdict, *, job_id: str | None = None, started_at: str | None = None,
                finished_at: str | None = None) -> JobRecord:
        """The record of a job that ended before (or around) its sandbox: only its verdict is known."""
        return cls(name=name, status=verdict.status, reason=verdict.reason, message=verdict.message,
                   job_id=job_id, started_at=started_at, finished_at=finished_at)

    def for_attempt(self, attempt: int) -> JobRecord:
        """The same record as attempt ``attempt`` of its job (the engine does not know attempts)."""
        return replace(self, attempt=attempt)

    def to_json(self) -> dict[str, Any]:
        """The documented JSON shape (README, "CLI"), ready for ``json.dumps`` and the database."""
        document = {
            "name": self.name, "status": str(self.status), "reason": None if self.reason is None else str(self.reason),
            "exit_code": self.exit_code, "signal": self.signal, "attempt": self.attempt,
            "duration_s": self.duration_s, "started_at": self.started_at, "finished_at": self.finished_at,
            "usage": self.usage.as_dict(),
            "artifacts": [a.as_dict() for a in self.artifacts],
            "rejected_artifacts": [r.as_dict() for r in self.rejected_artifacts],
            "job_id": self.job_id, "runtime": self.runtime, "log": self.log_path, "message": self.message,
        }
        if self.tests is not None:
            document["tests"] = dict(self.tests)
        if self.services:
            document["services"] = [s.as_dict() for s in self.services]
        return document
