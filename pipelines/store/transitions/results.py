"""A job's result: the worker's record, or the sweeper's verdict on a job whose worker vanished.

Either way the attempt is recorded (``job_attempt``), retried when the job's ``retry`` allows
(:func:`pipelines.store.advance.should_retry`), else settled with its artifacts kept, and the run
advanced (:class:`~pipelines.store.transitions.step.Step`). A failure in a run whose
``workflow:auto_cancel:on_job_failure`` is ``all`` then cancels the rest of the run
(:func:`pipelines.store.auto_cancel.cancel_rest_on_failure`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any, cast

from sqlmodel import Session

from pipelines.job_record import JobRecord, Reason, Status, Verdict
from pipelines.language.model import AllowFailure, Artifacts, Retry
from pipelines.record import replace
from pipelines.store.advance import should_retry
from pipelines.store.auto_cancel import cancel_rest_on_failure
from pipelines.store.models import Job
from pipelines.store.spec import spec_field
from pipelines.store.statements import OVERDUE
from pipelines.store.transitions.step import Step, settle, standing

REPORTED_STATUSES = frozenset({"succeeded", "failed", "cancelled", "error"})


def finish_job(session: Session, job_id: str, attempt: int, record: Mapping[str, Any], now: dt.datetime) -> list[str]:
    """Record the result of attempt ``attempt`` (a job result record), retry it if its
    ``retry`` allows, and advance the run. Returns the ids newly queued (publish them after the
    commit). A stale or duplicate report (the job is not running that attempt) changes nothing."""
    step = Step.begin(session, job_id)
    job = step.load_job(job_id)
    if job.status != "running" or job.attempt != attempt:
        return []
    retried = _record_result(step, job, dict(record), now)
    newly = retried + step.finish(now)
    return [] if cancel_rest_on_failure(session, job, now) else newly


def expire_leases(session: Session, now: dt.datetime, limit: int = 100) -> list[str]:
    """Settle running jobs whose worker vanished (lease expired: ``error``/``worker_lost``) or
    that ran past their timeout plus grace (``failed``/``timeout``): retried when ``retry``
    allows, else final. Returns the ids newly queued."""
    candidates: list[str] = list(session.connection().execute(OVERDUE, {"p_now": now, "p_limit": limit}).scalars())
    newly: list[str] = []
    for job_id in candidates:
        step = Step.begin(session, job_id)
        job = step.load_job(job_id)
        lease_gone = job.lease_expires_at is not None and job.lease_expires_at < now
        past_deadline = job.deadline_at is not None and job.deadline_at < now
        if job.status != "running" or not (lease_gone or past_deadline):
            continue  # renewed or finished while we looked
        status, reason = ("error", "worker_lost") if lease_gone else ("failed", "timeout")
        settled = _record_result(step, job, _lost_record(job, status, reason, now), now) + step.finish(now)
        if cancel_rest_on_failure(session, job, now):
            settled = []
        newly += settled
    return newly


def _record_result(step: Step, job: Job, record: dict[str, Any], now: dt.datetime) -> list[str]:
    """Record ``job``'s result in ``step``; ``[job.id]`` when it is retried (queued again).
    Only the rules it needs are read from the job's stored spec, not the whole job."""
    run = step.run
    retry_rule = cast(Retry, spec_field(job.spec, "retry"))
    allowed_failure = cast(AllowFailure, spec_field(job.spec, "allow_failure"))
    artifact_rules = cast("Artifacts | None", spec_field(job.spec, "artifacts"))
    before = standing(job)
    status = record.get("status")
    reason = record.get("reason")
    if status not in REPORTED_STATUSES:
        status, reason = "error", "infra_error"
    if (job.cancel_requested or run.cancelled) and status != "succeeded":
        status, reason = "cancelled", "cancelled"
    exit_code, signal = record.get("exit_code"), record.get("signal")
    record = {**record, "name": job.name, "status": status, "reason": reason, "attempt": job.attempt}
    retry = status != "cancelled" and should_retry(
        retry_rule, status=status, reason=reason, exit_code=exit_code, attempt=job.attempt
    )
    step.attempts.append(
        {
            "job_id": job.id,
            "attempt": job.attempt,
            "worker_id": job.lease_owner,
            "status": status,
            "reason": reason,
            "exit_code": exit_code,
            "signal": signal,
            "started_at": job.started_at,
            "finished_at": now,
            "duration_s": record.get("duration_s"),
            "retried": retry,
            "record": record,
        }
    )
    if retry:
        step.queue(job, now)
        step.changed(job, before)
        return [job.id]
    settle(job, status, reason, now)
    job.exit_code, job.signal = exit_code, signal
    job.duration_s = record.get("duration_s")
    job.usage = dict(record.get("usage") or {})
    job.log_path = record.get("log") or record.get("log_path")
    job.result = record
    job.allow_failure = allowed_failure.allowed or (
        status == "failed" and exit_code is not None and exit_code in allowed_failure.exit_codes
    )
    step.artifacts += _artifact_rows(job.id, record.get("artifacts") or (), artifact_rules, now)
    step.changed(job, before)
    return []


def _artifact_rows(
    job_id: str, artifacts: Iterable[Mapping[str, Any]], rules: Artifacts | None, now: dt.datetime
) -> list[dict[str, Any]]:
    expires_at = None
    if rules is not None and not rules.expire_never and rules.expire_in_seconds is not None:
        expires_at = now + dt.timedelta(seconds=rules.expire_in_seconds)
    return [
        {
            "job_id": job_id,
            "path": str(item["path"]),
            "size": int(item.get("size") or 0),
            "sha256": str(item.get("sha256") or ""),
            "created_at": now,
            "expires_at": expires_at,
        }
        for item in artifacts
    ]


def _lost_record(job: Job, status: str, reason: str, now: dt.datetime) -> dict[str, Any]:
    """The record of an attempt its worker never reported (the sweeper's verdict), made as every
    record is: a :class:`JobRecord`, serialised by its ``to_json``."""
    started = job.started_at or now
    message = "the worker stopped renewing its lease" if reason == "worker_lost" else "ran past its timeout"
    lost = JobRecord.not_run(job.name, Verdict(Status(status), Reason(reason), message),
                             started_at=started.isoformat(), finished_at=now.isoformat())
    return replace(lost, attempt=job.attempt, duration_s=round((now - started).total_seconds(), 3)).to_json()
