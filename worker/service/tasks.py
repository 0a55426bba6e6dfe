"""Celery tasks: thin. A message carries a job id and nothing else; the database decides the rest."""

from __future__ import annotations

from typing import Any

from pipelines.names import TASK_RUN_JOB
from worker.service.celery_app import app
from worker.service.context import handle_job


@app.task(name=TASK_RUN_JOB, ignore_result=True, bind=True)
def run_job(self: Any, job_id: Any) -> None:
    """Claim and run one job; a duplicate, stale or forged message finds nothing to claim."""
    if not isinstance(job_id, str) or len(job_id) > 64:
        return  # forged or malformed: nothing in the database can match it
    service = self.app.service
    if service is None:  # a task run outside a started sandpit worker (worker_init builds it)
        raise RuntimeError("sandpit: no service context on this Celery app (start it with `sandpit worker`)")
    handle_job(service, job_id)
