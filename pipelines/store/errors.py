"""The run store's one error root and its tree.

::

    StoreError                 anything the run store reports
    ├── RunNotFound            no run has that id
    ├── JobNotFound            no job has that id
    ├── RunFinished            a cancel asked of a run that has ended (left as it is)
    ├── JobFinished            a cancel asked of a job in a final state (left as it is)
    ├── DatabaseUnavailable    the database did not answer (``reads.ping``)
    └── MigrationFailed        Alembic could not bring the schema to head

Callers map these at their edge: the API to 404/500, the Celery task to "drop the message".
Compare-and-set losses (a claim that lost a race, a stale attempt) are not errors: the
functions return None or an empty list, because duplicates and redeliveries are normal.
"""

from __future__ import annotations


class StoreError(Exception):
    """Root of every error raised by ``pipelines.store``."""


class RunNotFound(StoreError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run with id {run_id!r}")
        self.run_id = run_id


class JobNotFound(StoreError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class RunFinished(StoreError):
    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(f"run {run_id!r} has already finished ({status}); a finished run is not cancelled")
        self.run_id = run_id
        self.status = status


class JobFinished(StoreError):
    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"job {job_id!r} has already finished ({status}); a finished job is not cancelled")
        self.job_id = job_id
        self.status = status


class DatabaseUnavailable(StoreError):
    """The database did not answer; ``kind`` names the driver's error (``OperationalError``)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class MigrationFailed(StoreError):
    """The schema could not be migrated; ``__cause__`` holds the database's own error."""
