"""A delivery the API refuses as damaged (422 ``digest_mismatch``) over the http transport: the
job ends ``error``/``infra_error`` without its artifacts, and the caches it pushed are not named
in the database, since their files did not reach the API. A real API, a real worker process on a
host of its own (``tests/integration/deploy``), a real container."""

from __future__ import annotations

import json

import pytest
from sqlmodel import select

from pipelines.store.db import make_engine, session_scope
from pipelines.store.models import CacheEntry
from tests.integration.deploy.conftest import Deployment, deployment, hosts_root, redis  # noqa: F401 - fixtures

CACHE_JOB = """
seed:
  script: [sleep 3, mkdir -p deps, "echo cached-by-$CI_JOB_ID > deps/v"]
  cache: {key: deps-refused, paths: [deps]}
  artifacts: {paths: [deps]}
"""


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the database plays no part here
def test_a_refused_delivery_names_none_of_its_caches(deployment: Deployment) -> None:  # noqa: F811
    """The API is down when the job ends, so its worker keeps the delivery and retries it; the
    worker's copy of the cache's manifest is damaged meanwhile; once the API is back it answers
    the delivery 422: the job is error/infra_error with no artifacts, and the key ``deps-refused``
    names no cache (no worker could restore files the API does not have)."""
    deployment.start_api()
    one = deployment.host("one")
    run, _worker, outbox = deployment.delivery_waiting(one, CACHE_JOB)
    entry = json.loads(next(outbox.glob("*.json")).read_text())
    [(key, manifest, _size)] = entry["caches"]
    assert key == "deps-refused" and manifest in entry["blobs"]
    local = one.state / "artifacts" / manifest[:2] / manifest
    local.write_bytes(b"[]")  # no longer the bytes its name says
    deployment.start_api()
    ended = deployment.wait(run["id"], timeout=60)
    [job] = ended["jobs"]
    assert (job["status"], job["reason"], job["artifacts"]) == ("error", "infra_error", []), job
    assert "digest_mismatch" in job["message"]
    assert not _cache_named(deployment, "deps-refused")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the database plays no part here
def test_a_refused_replayed_delivery_is_recorded_as_the_jobs_thread_records_it(
        deployment: Deployment) -> None:  # noqa: F811
    """The worker is SIGKILLed while the delivery waits in its outbox, and the cache's manifest is
    damaged meanwhile: the next worker process on the host takes the attempt over and replays the
    delivery, the API answers 422, and the attempt is recorded error/infra_error at once (not left
    to its lease's expiry), without its artifacts, and the key names no cache."""
    deployment.start_api()
    one = deployment.host("one")
    run, first, outbox = deployment.delivery_waiting(one, CACHE_JOB)
    job_id = run["jobs"][0]["id"]
    first.kill()
    first.wait()
    entry = json.loads(next(outbox.glob("*.json")).read_text())
    [(_key, manifest, _size)] = entry["caches"]
    (one.state / "artifacts" / manifest[:2] / manifest).write_bytes(b"[]")
    deployment.http_worker(one)
    deployment.start_api()
    ended = deployment.wait(run["id"], timeout=60)
    [job] = ended["jobs"]
    assert (job["status"], job["reason"], job["artifacts"]) == ("error", "infra_error", []), job
    assert "digest_mismatch" in job["message"]
    assert [a.attempt for a in deployment.attempts(job_id)] == [1]
    assert list(outbox.glob("*.json")) == []
    assert not _cache_named(deployment, "deps-refused")


def _cache_named(deploy: Deployment, key: str) -> bool:
    """Whether the database names a cache under ``key`` (what a restore on any worker reads)."""
    engine = make_engine(deploy.db_url)
    try:
        with session_scope(engine) as s:
            return s.exec(select(CacheEntry).where(CacheEntry.key == key)).first() is not None
    finally:
        engine.dispose()
