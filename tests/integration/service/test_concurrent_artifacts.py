"""Artifacts through a threaded worker (the real service): runs that keep the same path at the
same moment never lose a job and never store one run's bytes under another's sha256."""

from __future__ import annotations

import hashlib

import pytest
from sqlmodel import select

from pipelines.store.db import make_engine, session_scope
from pipelines.store.models import Artifact
from tests.integration.service.conftest import Service
from tests.sandbox.conftest import TEST_STATE

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

RUNS = 6
PIPELINE = """
stages: [build, use]
build:
  stage: build
  script:
    - mkdir -p out && head -c 8M /dev/urandom > out/blob && sha256sum out/blob > out/blob.sha256
  artifacts: {paths: [out/]}
use:
  stage: use
  script: [sha256sum -c out/blob.sha256]
"""


def test_six_runs_keeping_out_blob_at_once(service: Service) -> None:
    """Six runs on one worker with six threads, each keeping its own ``out/blob``: every job
    succeeds (none ``worker_lost``), each stored file hashes to the sha256 recorded for it, and
    the dependent job received exactly the bytes its build job made."""
    service.start_worker(concurrency=RUNS)
    run_ids = [service.submit(PIPELINE) for _ in range(RUNS)]
    outcomes = {run_id: service.wait(run_id, timeout=180) for run_id in run_ids}
    for run_id, status in outcomes.items():
        jobs = service.jobs(run_id)
        why = {n: (j.status, j.reason, (j.result or {}).get("message")) for n, j in jobs.items()}
        assert status == "succeeded", why
    engine = make_engine(service.db_url)
    try:
        with session_scope(engine) as s:
            build_ids = [service.jobs(r)["build"].id for r in run_ids]
            rows = s.exec(select(Artifact).where(Artifact.job_id.in_(build_ids))).all()  # type: ignore[attr-defined]
            blobs = [(r.job_id, r.sha256) for r in rows if r.path == "out/blob"]
    finally:
        engine.dispose()
    try:
        assert len(blobs) == RUNS and len({sha for _job, sha in blobs}) == RUNS
        for _job, sha in blobs:
            stored = TEST_STATE / "artifacts" / sha[:2] / sha
            assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha
    finally:  # random content nobody else stores: leave the shared store as it was
        for _job, sha in blobs:
            (TEST_STATE / "artifacts" / sha[:2] / sha).unlink(missing_ok=True)
