"""The API's request and response shapes (pydantic, at the border), separate from the tables.

``JobPublic`` is the job result record of ARCHITECTURE.md plus ``id``, ``run_id``, ``stage`` and
``message`` (why a job that did not succeed ended as it did: the worker's own words when it gave
some, else a sentence for its reason, see :func:`outcome_message`); ``RunPublic`` has no field for
secrets, so no endpoint can return them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.store.models import Artifact, Job, Run


class RunSourceRequest(BaseModel):
    """Where the run's jobs get their ``/workspace``: a registered repository's commit (``repository``
    with ``sha``, or ``ref`` resolved on its clone URL, default its default branch), or an uploaded
    tree (``archive``: base64 of a tar, gzip allowed, capped by SANDPIT_API_MAX_ARCHIVE)."""

    model_config = ConfigDict(extra="forbid")

    repository: str | None = Field(default=None, max_length=255, description="a registered repository's id or name")
    sha: str | None = Field(default=None, pattern=r"^([0-9a-f]{40}|[0-9a-f]{64})$")
    ref: str | None = Field(default=None, max_length=255, description="a branch or tag of the repository")
    archive: str | None = Field(default=None, description="base64 of a tar (or tar.gz) of the tree")
    pipeline_path: str = Field(default=".gitlab-ci.yml", max_length=255, pattern=r"^[A-Za-z0-9._/-]+$",
                               description="an archive's pipeline file (when `pipeline` is not given), and the "
                               "name its `include: local` paths are relative to")


class RunCreate(BaseModel):
    """The JSON form of ``POST /api/v1/runs`` (the YAML form is the pipeline text alone)."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(default="", description="the pipeline file's text (.gitlab-ci.yml dialect); may be "
                          "left out with a `source`: its pipeline file is read from the commit or the tree")
    source: RunSourceRequest | None = Field(default=None, description="the files every job starts with")
    variables: dict[str, str] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict, description="injected and masked; never returned")
    ref: str = Field(default="main", max_length=255)
    sha: str = Field(default="", max_length=64)
    message: str = Field(default="", max_length=10_000)
    trust: Literal["trusted", "untrusted"] | None = Field(
        default=None,
        description="the run's trust level (its policy and caches); default: the token's. "
        "Only a trusted token may ask for `trusted`.",
    )


class ArtifactPublic(BaseModel):
    path: str
    size: int
    sha256: str


class RejectedArtifact(BaseModel):
    path: str
    why: str


class TestFailurePublic(BaseModel):
    name: str
    kind: Literal["failed", "errored"]
    message: str = Field(description="the first lines of its failure message")
    report: str = Field(default="", description="the report file that named it")


class TestReportPublic(BaseModel):
    """What the job's ``artifacts:reports:junit`` files say (worker/junit.py)."""

    tests: int
    passed: int
    failed: int
    errored: int
    skipped: int
    files: list[str] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list, description="reports that could not be read, and why")
    failures: list[TestFailurePublic] = Field(default_factory=list, description="the failed and errored tests "
                                              "(the first 50)")


class JobPublic(BaseModel):
    id: str
    run_id: str
    stage: str
    name: str
    status: str
    reason: str | None
    exit_code: int | None
    signal: int | None
    attempt: int
    duration_s: float | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    usage: dict[str, Any]
    artifacts: list[ArtifactPublic]
    rejected_artifacts: list[RejectedArtifact]
    message: str | None = Field(default=None, description="why the job ended as it did (None while it runs "
                                "and when it succeeded)")
    tests: TestReportPublic | None = Field(default=None, description="its JUnit reports' summary; None when it "
                                           "has no `artifacts:reports:junit` or has not run")


class RunPublic(BaseModel):
    id: str
    status: str
    cancelled: bool
    trust: str
    source: str
    ref: str
    sha: str
    message: str
    variables: dict[str, str]
    stages: list[str]
    created_at: dt.datetime
    finished_at: dt.datetime | None
    jobs: list[JobPublic]


class ArtifactList(BaseModel):
    job_id: str
    artifacts: list[ArtifactPublic]


class Health(BaseModel):
    ok: bool
    database: str
    redis: str


def artifact_public(row: Artifact) -> ArtifactPublic:
    return ArtifactPublic(path=row.path, size=row.size, sha256=row.sha256)


_REASONS = {
    "oom": "it ran out of memory (the job's memory limit)",
    "pids_limit": "it hit the job's process limit",
    "timeout": "it ran past its timeout",
    "disk_quota": "it filled the job's disk quota",
    "log_limit": "its output passed the log limit",
    "cancelled": "it was cancelled",
    "worker_lost": "its worker stopped renewing the job's lease",
    "infra_error": "sandpit failed to run it (not the job's fault)",
    "invalid_spec": "sandpit refused the job's request before starting it",
    "dependency_failed": "a job it depends on failed",
}
_UNFINISHED = frozenset({"created", "queued", "running", "manual"})


def outcome_message(status: str, reason: str | None, exit_code: int | None, signal: int | None,
                    recorded: object = None) -> str | None:
    """Why a job ended as it did: the worker's message when it recorded one, else a sentence.

    >>> outcome_message("failed", "exit_code", 2, None)
    'the script exited with status 2'
    >>> outcome_message("failed", "invalid_spec", None, None, "image 'nope' is not known")
    "image 'nope' is not known"
    >>> outcome_message("succeeded", None, 0, None) is None
    True
    """
    if status in _UNFINISHED or status == "succeeded":
        return None
    if isinstance(recorded, str) and recorded.strip():
        return recorded
    if reason == "exit_code" or (reason is None and status == "failed"):
        if signal is not None:
            return f"the script was killed by signal {signal}"
        if exit_code is not None:
            return f"the script exited with status {exit_code}"
    if reason in _REASONS:
        return _REASONS[reason]
    if status == "skipped":
        return "its `when` or rules did not let it run"
    return f"it ended {status}" + (f" ({reason})" if reason else "")


def job_public(job: Job, artifacts: list[Artifact]) -> JobPublic:
    result = job.result if isinstance(job.result, dict) else {}
    rejected = result.get("rejected_artifacts")
    return JobPublic(
        id=job.id,
        run_id=job.run_id,
        stage=job.stage,
        name=job.name,
        status=job.status,
        reason=job.reason,
        exit_code=job.exit_code,
        signal=job.signal,
        attempt=job.attempt,
        duration_s=job.duration_s,
        started_at=job.started_at,
        finished_at=job.finished_at,
        usage=dict(job.usage or {}),
        artifacts=[artifact_public(a) for a in artifacts],
        rejected_artifacts=[
            RejectedArtifact(path=str(r.get("path", "")), why=str(r.get("why", "")))
            for r in (rejected or [])
            if isinstance(r, dict)
        ],
        message=outcome_message(job.status, job.reason, job.exit_code, job.signal, result.get("message")),
        tests=_tests(result.get("tests")),
    )


def _tests(recorded: object) -> TestReportPublic | None:
    """The record's ``tests`` as the API shows it; a record from before reports (or a damaged one) has none."""
    if not isinstance(recorded, dict):
        return None
    try:
        return TestReportPublic.model_validate(recorded)
    except ValueError:
        return None


def run_public(run: Run, jobs: list[JobPublic]) -> RunPublic:
    return RunPublic(
        id=run.id,
        status=run.status,
        cancelled=run.cancelled,
        trust=run.trust,
        source=run.source,
        ref=run.ref,
        sha=run.sha,
        message=run.message,
        variables=dict(run.variables or {}),
        stages=list(run.stages or []),
        created_at=run.created_at,
        finished_at=run.finished_at,
        jobs=jobs,
    )


class ProblemPublic(BaseModel):
    file: str
    line: int
    col: int
    severity: str
    code: str
    message: str
    hint: str
    caused_by: str | None = None


class RunCreated(RunPublic):
    """A new run, with the planner's warnings (a run with errors is never created)."""

    warnings: list[ProblemPublic] = Field(default_factory=list)


class ProblemList(BaseModel):
    """The 422 body of a pipeline that cannot be planned."""

    error: str
    message: str
    problems: list[ProblemPublic]
