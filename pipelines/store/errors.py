"""The run store's one error root and its tree.

::

    StoreError                 anything the run store reports
    ├── RunNotFound            no run has that id
    ├── JobNotFound            no job has that id
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


class MigrationFailed(StoreError):
    """The schema could not be migrated; ``__cause__`` holds the database's own error."""
