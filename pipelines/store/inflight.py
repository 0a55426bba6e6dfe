"""Runs in flight per submitter: the store read behind the policy's runs-in-flight cap (adapter).

A submitter is who asked for a run (``token:<name>`` for the API; a repository for web-hooks);
a run is in flight until it has ended (``finished_at`` set). :func:`count_runs_in_flight`
counts them inside the transaction that will store the new run, after taking a per-submitter
lock, so two submissions racing for the last slot cannot both get it: SQLite's ``BEGIN
IMMEDIATE`` (see :mod:`pipelines.store.db`) already serialises writers, PostgreSQL takes a
transaction-level advisory lock on the submitter (released at commit or rollback; other
submitters are not held up).
"""

from __future__ import annotations

import hashlib

from sqlmodel import Session

from pipelines.store.statements import ADVISORY_XACT_LOCK, COUNT_IN_FLIGHT, SET_SUBMITTER

_LOCK_NAMESPACE = b"sandpit.runs-in-flight:"


def lock_key(submitter: str) -> int:
    """A signed 64-bit advisory lock key for ``submitter`` (stable across processes and hosts).

    >>> lock_key("token:ci") == lock_key("token:ci") != lock_key("token:user")
    True
    """
    digest = hashlib.blake2b(_LOCK_NAMESPACE + submitter.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def count_runs_in_flight(session: Session, submitter: str) -> int:
    """How many runs of ``submitter`` have not ended; holds the submitter's lock until the
    transaction ends (store the new run in the same transaction)."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        connection.execute(ADVISORY_XACT_LOCK, {"p_key": lock_key(submitter)})
    return int(connection.execute(COUNT_IN_FLIGHT, {"p_submitter": submitter}).scalar_one())


def record_submitter(session: Session, run_id: str, submitter: str) -> None:
    """Mark the run as ``submitter``'s (in the transaction that stored it)."""
    session.connection().execute(SET_SUBMITTER, {"p_run_id": run_id, "p_submitter": submitter})
