"""Celery tasks: thin. A message carries a job id and nothing else; the database decides the rest."""

from __future__ import annotations

from typing import Any

from pipelines.names import TASK_RUN_JOB
from worker.celery_app import app


@app.task(name=TASK_RUN_JOB, ignore_result=True)
def run_job(job_id: Any) -> None:
    """Claim and run one job; a duplicate, stale or forged message finds nothing to claim."""
    from worker.service import handle_job

    if not isinstance(job_id, str) or len(job_id) > 64:
        return  # forged or malformed: nothing in the database can match it
    handle_job(job_id)
