"""Store fixtures: a migrated engine on each backend and small helpers to drive a run."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from pipelines.language.model import Plan
from pipelines.language.planner import plan
from pipelines.store.db import make_engine, migrate, session_scope
from pipelines.store.models import Job
from pipelines.store.reads import run_jobs
from pipelines.store.transitions import claim_job, create_run, finish_job

T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    migrate(db_url)
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def planned(yaml_text: str) -> Plan:
    result = plan({".gitlab-ci.yml": yaml_text})
    assert isinstance(result, Plan), result
    return result


def start_run(engine: Engine, yaml_text: str, trust: Any = "trusted") -> str:
    with session_scope(engine) as session:
        return create_run(
            session, planned(yaml_text), trust=trust, source="api", variables={}, now=T0, pipeline=yaml_text
        ).run.id


def jobs(engine: Engine, run_id: str) -> dict[str, Job]:
    with session_scope(engine) as session:
        return {job.name: job for job in run_jobs(session, run_id)}


def record(status: str = "succeeded", exit_code: int | None = 0, **extra: Any) -> dict[str, Any]:
    reason = None if status == "succeeded" else extra.pop("reason", "exit_code")
    return {
        "name": "x",
        "status": status,
        "reason": reason,
        "exit_code": exit_code,
        "signal": None,
        "attempt": 1,
        "duration_s": 0.5,
        "usage": {"cpu_s": 0.1},
        "artifacts": [],
        **extra,
    }


def run_job(engine: Engine, run_id: str, name: str, result: dict[str, Any] | None = None, now: float = 1) -> list[str]:
    """Claim the named job as worker w1 and report ``result``; returns the newly queued ids."""
    job_id = jobs(engine, run_id)[name].id
    with session_scope(engine) as session:
        claimed = claim_job(session, job_id, "w1", at(now), lease_s=30)
        assert claimed is not None, f"{name} was not claimable"
        attempt = claimed.attempt
    with session_scope(engine) as session:
        return finish_job(session, job_id, attempt, result or record(), at(now + 1))


def statuses(engine: Engine, run_id: str) -> dict[str, tuple[str, str | None]]:
    return {name: (job.status, job.reason) for name, job in jobs(engine, run_id).items()}
