"""Playing a manual job and retrying a finished one through the REST API (real redis-server,
SQLite file and PostgreSQL, uvicorn on loopback; the worker is played through the store, as in
the other API tests, and a real worker runs retried jobs in tests/integration/ui)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy.engine import Engine

from api.publish import PublishFailed
from api.settings import ApiSettings
from pipelines.names import QUEUE, TASK_RUN_JOB, log_stream_key
from pipelines.store.db import read_scope
from pipelines.store.outbox import pending_outbox
from tests.conftest import REPO
from tests.integration.api.conftest import (
    TRUSTED_TOKEN,
    USER_TOKEN,
    claim,
    create,
    finish,
    serve_in_thread,
    write_eof,
    write_stream,
)
from tests.integration.api.test_runs import broker_messages

CHAIN = "stages: [a, b]\nbuild:\n  stage: a\n  script: [make]\ncheck:\n  stage: b\n  script: [make check]\n"
MANUAL = "stages: [a, b]\nfirst:\n  stage: a\n  script: [x]\ngate:\n  stage: b\n  when: manual\n  script: [y]\n"
TRUSTED = {"Authorization": f"Bearer {TRUSTED_TOKEN}"}


def _failed(client: httpx.Client, engine: Engine) -> tuple[str, str, str]:
    run = create(client, CHAIN)
    build, check = (job["id"] for job in run["jobs"])
    finish(engine, build, claim(engine, build), status="failed", reason="exit_code", exit_code=2)
    assert client.get(f"/api/v1/jobs/{check}", headers=TRUSTED).json()["status"] == "skipped"
    return run["id"], build, check


def test_retry_queues_a_failed_job_again_and_publishes_it(client: httpx.Client, engine: Engine,
                                                          rds: redis.Redis) -> None:
    """200 with the job queued; it is on the broker; what it skipped waits again; the run runs;
    the old attempt's live log is gone so a follower of the new one does not stop at its end."""
    run_id, build, check = _failed(client, engine)
    write_stream(rds, build, [("out", "first attempt\n")])
    write_eof(rds, build, "failed")
    rds.delete(QUEUE)
    response = client.post(f"/api/v1/jobs/{build}/retry")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["exit_code"], body["reason"]) == ("queued", None, None)
    assert broker_messages(rds) == [(TASK_RUN_JOB, [build])]
    assert rds.exists(log_stream_key(build)) == 0
    assert client.get(f"/api/v1/jobs/{check}").json()["status"] == "created"
    run = client.get(f"/api/v1/runs/{run_id}").json()
    assert (run["status"], run["finished_at"]) == ("running", None)
    with read_scope(engine) as session:
        assert pending_outbox(session) == []  # written as sent, and it was
    assert claim(engine, build) == 2
    finish(engine, build, 2)
    assert client.get(f"/api/v1/jobs/{check}").json()["status"] == "queued"


def test_retry_refuses_what_has_not_ended_with_409_and_unknown_with_404(client: httpx.Client,
                                                                       engine: Engine) -> None:
    """A running job, a waiting one and a skipped one: 409 not_retryable naming the status, and
    nothing changed; an unknown id: 404."""
    run = create(client, CHAIN)
    build, check = (job["id"] for job in run["jobs"])
    claim(engine, build)
    for job_id, status in ((build, "running"), (check, "created")):
        response = client.post(f"/api/v1/jobs/{job_id}/retry")
        assert response.status_code == 409
        assert response.json()["error"] == "not_retryable" and response.json()["status"] == status
        assert status in response.json()["message"] or "has not run" in response.json()["message"]
    finish(engine, build, 1, status="failed", reason="exit_code", exit_code=1)
    skipped = client.post(f"/api/v1/jobs/{check}/retry")
    assert skipped.status_code == 409 and "skipped" in skipped.json()["message"]
    assert client.get(f"/api/v1/jobs/{check}").json()["status"] == "skipped"
    missing = client.post("/api/v1/jobs/no-such-job/retry")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_a_trusted_runs_jobs_are_started_by_trusted_tokens_only(client: httpx.Client, engine: Engine) -> None:
    """An untrusted token may not retry or play a job of a trusted run (403, nothing changed);
    a trusted one may, and the run stays trusted."""
    response = client.post("/api/v1/runs", content=CHAIN, headers={**TRUSTED, "Content-Type": "application/yaml"},
                           params={"trust": "trusted"})
    run = response.json()
    build = run["jobs"][0]["id"]
    finish(engine, build, claim(engine, build), status="failed", reason="exit_code", exit_code=2)
    refused = client.post(f"/api/v1/jobs/{build}/retry")
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    assert client.get(f"/api/v1/jobs/{build}").json()["status"] == "failed"
    allowed = client.post(f"/api/v1/jobs/{build}/retry", headers=TRUSTED)
    assert allowed.status_code == 200 and allowed.json()["status"] == "queued"
    assert client.get(f"/api/v1/runs/{run['id']}").json()["trust"] == "trusted"
    manual = client.post("/api/v1/runs", content=MANUAL, headers={**TRUSTED, "Content-Type": "application/yaml"},
                         params={"trust": "trusted"}).json()
    first, gate = (job["id"] for job in manual["jobs"])
    finish(engine, first, claim(engine, first))
    assert client.post(f"/api/v1/jobs/{gate}/play").status_code == 403
    assert client.post(f"/api/v1/jobs/{gate}/play", headers=TRUSTED).json()["status"] == "queued"


def test_play_queues_a_manual_job_and_refuses_anything_else(client: httpx.Client, engine: Engine,
                                                            rds: redis.Redis) -> None:
    """A manual job: 200 queued, published; played again or a finished job: 409 not_playable with
    its status; unknown: 404."""
    run = create(client, MANUAL)
    first, gate = (job["id"] for job in run["jobs"])
    early = client.post(f"/api/v1/jobs/{gate}/play")
    assert early.status_code == 409 and early.json()["status"] == "created"
    finish(engine, first, claim(engine, first))
    rds.delete(QUEUE)
    played = client.post(f"/api/v1/jobs/{gate}/play")
    assert played.status_code == 200 and played.json()["status"] == "queued"
    assert broker_messages(rds) == [(TASK_RUN_JOB, [gate])]
    again = client.post(f"/api/v1/jobs/{gate}/play")
    assert (again.status_code, again.json()["error"], again.json()["status"]) == (409, "not_playable", "queued")
    done = client.post(f"/api/v1/jobs/{first}/play")
    assert done.status_code == 409 and "retried instead" in done.json()["message"]
    assert client.post("/api/v1/jobs/no-such-job/play").status_code == 404


class _DownPublisher:
    def publish(self, job_ids: Sequence[str]) -> None:
        raise PublishFailed("ConnectionError: Error 111 connecting to the broker")

    def close(self) -> None:
        pass


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_retry_while_the_broker_is_down_stays_in_the_outbox(settings: ApiSettings, engine: Engine) -> None:
    """The retry succeeds; the job's outbox row is pending again, for the sweeper to send."""
    with serve_in_thread(settings, publisher=_DownPublisher()) as server, httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {USER_TOKEN}"}, timeout=20) as c:
        run = create(c, CHAIN)
        build = run["jobs"][0]["id"]
        finish(engine, build, claim(engine, build), status="failed", reason="exit_code", exit_code=2)
        response = c.post(f"/api/v1/jobs/{build}/retry")
    assert response.status_code == 200 and response.json()["status"] == "queued"
    with read_scope(engine) as session:
        assert build in pending_outbox(session)


def test_sandpit_retry_and_play_talk_to_the_api(live: object, client: httpx.Client, engine: Engine,
                                                tmp_path: Path) -> None:
    """`sandpit retry JOB` and `sandpit play JOB` print the job's new status; a refusal exits 1
    with the API's 409 and its sentence."""
    env = {"PATH": os.environ["PATH"], "SANDPIT_STATE_DIR": str(tmp_path), "SANDPIT_TOKEN": USER_TOKEN,
           "SANDPIT_API_URL": live.url}  # type: ignore[attr-defined]
    _run_id, build, _check = _failed(client, engine)

    def sandpit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "worker", *args], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=60)

    done = sandpit("retry", build)
    assert done.returncode == 0 and done.stdout.strip() == f"job {build} (build): queued", done.stderr
    refused = sandpit("retry", build)
    assert refused.returncode == 1 and "409" in refused.stderr and "still queued" in refused.stderr
    run = create(client, MANUAL)
    first, gate = (job["id"] for job in run["jobs"])
    finish(engine, first, claim(engine, first))
    played = sandpit("play", gate)
    assert played.returncode == 0 and played.stdout.strip() == f"job {gate} (gate): queued", played.stderr
