"""Job and run state transitions: the database owns job state (adapter; "now" is passed in).

Job states::

    created ──► queued ──► running ──► succeeded | failed | error | cancelled
       │          ▲           │
       │          └─ retry ───┘  (also when its lease expires and retry allows)
       ├──► manual ──(play)──► queued
       └──► skipped (dependency_failed, or its `when` did not apply) | cancelled

    succeeded | failed | error | cancelled ──(a person's retry)──► queued  (what it let skip: ► created)

Every function works in the caller's session and transaction (see ``db.session_scope``); the
caller commits and only then publishes the returned job ids. Every write is a prepared Core
statement of :mod:`pipelines.store.statements`. The parts:

- :mod:`~pipelines.store.transitions.creation`: ``create_run`` (a plan laid out as rows);
- :mod:`~pipelines.store.transitions.leases`: ``claim_job``, ``renew_lease`` (compare-and-set);
- :mod:`~pipelines.store.transitions.results`: ``finish_job``, ``expire_leases``;
- :mod:`~pipelines.store.transitions.controls`: ``cancel_run``, ``cancel_job``, ``play_job``
  and the API's ``cancel_unfinished_*`` and ``play_manual_job``;
- :mod:`~pipelines.store.transitions.retry`: ``retry_job`` (one finished job, a new attempt);
- :mod:`~pipelines.store.transitions.step`: one transition of a locked run, which the last
  three share.

The decisions themselves are pure and live in :mod:`pipelines.store.advance` and
:mod:`pipelines.store.frontier`; what is read lives in :mod:`pipelines.store.reads`.
"""

from __future__ import annotations

from pipelines.store.transitions.controls import (
    cancel_job,
    cancel_run,
    cancel_unfinished_job,
    cancel_unfinished_run,
    play_job,
    play_manual_job,
)
from pipelines.store.transitions.creation import (
    SOURCES,
    TRUST_LEVELS,
    JobLayout,
    Source,
    StoredRun,
    Trust,
    create_run,
    layout_jobs,
)
from pipelines.store.transitions.leases import DEADLINE_GRACE_S, LeaseStatus, claim_job, renew_lease
from pipelines.store.transitions.results import REPORTED_STATUSES, expire_leases, finish_job
from pipelines.store.transitions.retry import Retried, retry_job

__all__ = [
    "DEADLINE_GRACE_S",
    "REPORTED_STATUSES",
    "SOURCES",
    "TRUST_LEVELS",
    "JobLayout",
    "LeaseStatus",
    "Retried",
    "Source",
    "StoredRun",
    "Trust",
    "cancel_job",
    "cancel_run",
    "cancel_unfinished_job",
    "cancel_unfinished_run",
    "claim_job",
    "create_run",
    "expire_leases",
    "finish_job",
    "layout_jobs",
    "play_job",
    "play_manual_job",
    "renew_lease",
    "retry_job",
]
