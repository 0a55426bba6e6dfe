"""Workers on hosts that share no disk with the API (``SANDPIT_ARTIFACT_TRANSPORT=http``): two
worker hosts and an API host, each with its own state dir, sharing only Redis and the database.
Artifacts pass between jobs that run on different workers and are downloaded from the API; a
cache saved on one worker restores on the other; an API that is down while a job ends delays its
result (the delivery waits in the worker's outbox) and loses nothing."""

from __future__ import annotations

import hashlib
import time

import pytest
from sqlmodel import select

from pipelines.store.db import make_engine, session_scope
from pipelines.store.models import CacheEntry
from pipelines.store.reads import load_job
from tests.integration.deploy.conftest import Deployment

PIPELINE = """
stages: [build, test]
build:
  stage: build
  script:
    - mkdir -p dist
    - echo "built by $CI_JOB_ID" > dist/app.txt
    - head -c 3000000 /dev/urandom > dist/blob.bin
    - sha256sum dist/blob.bin > dist/blob.sum
  artifacts:
    paths: [dist]
test:
  stage: test
  parallel: 4
  script:
    - cat dist/app.txt
    - sha256sum -c dist/blob.sum
    - sleep 2
"""


def _log(deploy: Deployment, job_id: str) -> str:
    with deploy.client() as c:
        response = c.get(f"/api/v1/jobs/{job_id}/log")
    assert response.status_code == 200, response.text
    return response.text


def test_artifacts_pass_between_jobs_on_different_workers_through_the_api(deployment: Deployment) -> None:
    """The build's artifacts reach test jobs on the other worker (their logs show the build's id
    and the 3 MB file checks out), the API serves them for download with the right bytes, every
    job's log is the API's copy, and no worker keeps a log once it was delivered."""
    api = deployment.start_api()
    one, two = deployment.host("one"), deployment.host("two")
    deployment.http_worker(one)
    deployment.http_worker(two)
    deployment.wait_for("two workers", lambda: len(deployment.workers()) == 2)
    assert {w["transport"] for w in deployment.workers()} == {"http"}

    run = deployment.submit(PIPELINE)
    ended = deployment.wait(run["id"])
    assert ended["status"] == "succeeded", [(j["name"], j["status"], j["message"]) for j in ended["jobs"]]
    jobs = {j["name"]: j for j in ended["jobs"]}
    build = jobs["build"]
    builder = deployment.attempts(build["id"])[-1].worker_id
    elsewhere = [j for name, j in jobs.items() if name != "build"
                 and deployment.attempts(j["id"])[-1].worker_id != builder]
    assert elsewhere, "no test job ran on the other worker"
    for job in elsewhere:
        text = _log(deployment, job["id"])
        assert f"built by {build['id']}" in text and "dist/blob.bin: OK" in text, text

    with deployment.client() as c:
        blob = c.get(f"/api/v1/jobs/{build['id']}/artifacts/dist/blob.bin")
        sums = c.get(f"/api/v1/jobs/{build['id']}/artifacts/dist/blob.sum")
    assert blob.status_code == 200 and len(blob.content) == 3_000_000
    assert sums.text.split()[0] == hashlib.sha256(blob.content).hexdigest() == blob.headers["x-content-sha256"]

    for job in jobs.values():
        assert (api.state / "logs" / f"{job['id']}.jsonl").is_file()
    for host in (one, two):
        assert list((host.state / "logs").glob("*.jsonl")) == [], f"{host.name} kept a delivered log"
        assert not list((host.state / "outbox").glob("*.json")) if (host.state / "outbox").exists() else True


CACHE_WRITE = """
seed:
  script: [mkdir -p deps, "echo cached-by-$CI_JOB_ID > deps/v"]
  cache: {key: deps-v1, paths: [deps]}
"""
CACHE_READ = """
read:
  script: [cat deps/v]
  cache: {key: deps-v1, paths: [deps], policy: pull}
"""


def test_a_cache_saved_on_one_worker_restores_on_another(deployment: Deployment) -> None:
    """A cache pushed by a job on host one is pulled by a job on host two, through the API."""
    deployment.start_api()
    one, two = deployment.host("one"), deployment.host("two")
    deployment.http_worker(one)
    deployment.wait_for("worker one", lambda: len(deployment.workers()) == 1)
    first = deployment.wait(deployment.submit(CACHE_WRITE)["id"])
    assert first["status"] == "succeeded", first["jobs"]
    one.stop()
    deployment.http_worker(two)
    deployment.wait_for("worker two", lambda: any(w["state"] == "alive" for w in deployment.workers()))
    second = deployment.wait(deployment.submit(CACHE_READ)["id"])
    assert second["status"] == "succeeded", second["jobs"]
    reader = second["jobs"][0]
    assert deployment.attempts(reader["id"])[-1].worker_id != deployment.attempts(first["jobs"][0]["id"])[-1].worker_id
    assert f"cached-by-{first['jobs'][0]['id']}" in _log(deployment, reader["id"])


SLOW_BUILD = """
build:
  script: [sleep 3, mkdir dist, "echo made while the API was away > dist/out"]
  artifacts: {paths: [dist]}
"""


def test_the_api_down_while_a_job_ends_delays_its_result_and_loses_nothing(deployment: Deployment) -> None:
    """The API stops while the job runs: the job's delivery waits in the worker's outbox (a file
    under its state dir) and the job stays running (its lease renewed); once the API is back the
    files go through, the result is recorded, the artifact downloads, and the outbox is empty."""
    deployment.start_api()
    one = deployment.host("one")
    run, _worker, outbox = deployment.delivery_waiting(one, SLOW_BUILD)
    job_id = run["jobs"][0]["id"]
    engine = make_engine(deployment.db_url)
    try:
        time.sleep(4)  # longer than the lease (3 s): it is renewed while the delivery waits
        assert load_job(engine, job_id).status == "running"
    finally:
        engine.dispose()

    deployment.start_api()
    ended = deployment.wait(run["id"], timeout=60)
    assert ended["status"] == "succeeded", ended["jobs"]
    assert ended["jobs"][0]["attempt"] == 1
    with deployment.client() as c:
        got = c.get(f"/api/v1/jobs/{job_id}/artifacts/dist/out")
    assert got.status_code == 200 and got.text == "made while the API was away\n"
    assert list(outbox.glob("*.json")) == []


def test_a_worker_restarted_while_its_delivery_waits_takes_it_up(deployment: Deployment) -> None:
    """The API is down when the job ends, and the worker is SIGKILLed while the delivery waits in
    its outbox: the next worker process on that host takes the attempt's lease over, delivers
    once the API is back, and records the first attempt's result (no worker_lost, no retry)."""
    deployment.start_api()
    one = deployment.host("one")
    run, first, outbox = deployment.delivery_waiting(one, SLOW_BUILD)
    job_id = run["jobs"][0]["id"]
    first.kill()
    first.wait()
    time.sleep(4)  # the dead worker's lease (3 s) has expired: no sweeper ran to settle it
    deployment.http_worker(one)
    deployment.start_api()
    ended = deployment.wait(run["id"], timeout=60)
    assert ended["status"] == "succeeded", ended["jobs"]
    assert [a.attempt for a in deployment.attempts(job_id)] == [1]
    with deployment.client() as c:
        assert c.get(f"/api/v1/jobs/{job_id}/artifacts/dist/out").text == "made while the API was away\n"
    assert list(outbox.glob("*.json")) == []


CACHE_AFTER_RESTART = """
seed:
  script: [sleep 3, mkdir -p deps, "echo cached-by-$CI_JOB_ID > deps/v"]
  cache: {key: deps-restart, paths: [deps]}
"""
CACHE_RESTORE = """
read:
  script: [cat deps/v]
  cache: {key: deps-restart, paths: [deps], policy: pull}
"""


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the database plays no part here
def test_a_restarted_workers_delivery_saves_the_attempts_cache_too(deployment: Deployment) -> None:
    """The worker is SIGKILLed while a cache-pushing job's delivery waits in its outbox (the API
    down): the next worker process on that host delivers and records it, the cache's key names the
    delivered manifest, and a job on another worker host restores that cache through the API."""
    deployment.start_api()
    one, two = deployment.host("one"), deployment.host("two")
    run, first, _outbox = deployment.delivery_waiting(one, CACHE_AFTER_RESTART)
    job_id = run["jobs"][0]["id"]
    first.kill()
    first.wait()
    deployment.http_worker(one)
    deployment.start_api()
    ended = deployment.wait(run["id"], timeout=60)
    assert ended["status"] == "succeeded", ended["jobs"]
    assert [a.attempt for a in deployment.attempts(job_id)] == [1]
    engine = make_engine(deployment.db_url)
    try:
        with session_scope(engine) as s:
            entry = s.exec(select(CacheEntry).where(CacheEntry.key == "deps-restart")).first()
            assert entry is not None, "the replayed delivery did not name its cache"
            manifest = entry.sha256
            # and its files, read from the worker's copy of the manifest, so expiry keeps them
            from pipelines.store.cache_blobs import manifest_members

            assert len(manifest_members(s, manifest)) == 1
    finally:
        engine.dispose()
    api = deployment.api_host
    assert api is not None and (api.state / "artifacts" / manifest[:2] / manifest).is_file()

    one.stop()
    deployment.http_worker(two)
    deployment.wait_for("worker two", lambda: any(w["state"] == "alive" for w in deployment.workers()))
    read = deployment.wait(deployment.submit(CACHE_RESTORE)["id"])
    assert read["status"] == "succeeded", read["jobs"]
    assert f"cached-by-{job_id}" in _log(deployment, read["jobs"][0]["id"])


SERVICE_JOB = """
test:
  image: debian
  variables: {CI_DEBUG_SERVICES: "true"}
  services:
    - name: python
      alias: web
      command: [python3, -m, http.server, "8000"]
      variables: {HEALTHCHECK_TCP_PORT: "8000"}
  script:
    - 'exec 3<>/dev/tcp/web/8000 && printf "GET /from-the-job HTTP/1.0\\r\\n\\r\\n" >&3 && head -1 <&3'
"""


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the database plays no part here
def test_service_logs_reach_the_api_like_artifacts(deployment: Deployment) -> None:
    """With the http transport a job's service log is delivered with its files: the API serves it
    at /services/0/log, the record names the API's copy, the worker keeps no copy; with
    CI_DEBUG_SERVICES the service's lines are in the job's log too."""
    api = deployment.start_api()
    one = deployment.host("one")
    deployment.http_worker(one)
    deployment.wait_for("the worker", lambda: deployment.workers())
    ended = deployment.wait(deployment.submit(SERVICE_JOB)["id"])
    assert ended["status"] == "succeeded", ended["jobs"]
    job = ended["jobs"][0]
    with deployment.client() as c:
        served = c.get(f"/api/v1/jobs/{job['id']}/services/0/log")
    engine = make_engine(deployment.db_url)
    try:
        result = load_job(engine, job["id"]).result
    finally:
        engine.dispose()
    assert served.status_code == 200 and '"GET /from-the-job HTTP/1.0"' in served.text, served.text
    assert result["services"][0]["log"] == f"logs/{job['id']}.svc0.jsonl"
    assert (api.state / "logs" / f"{job['id']}.svc0.jsonl").is_file()
    assert list((one.state / "logs").glob("*.jsonl")) == [], "the worker kept a delivered log"
    assert "[service:web]" in _log(deployment, job["id"])
