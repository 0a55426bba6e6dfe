"""Creating, reading and cancelling runs through the REST API."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy.engine import Engine
from sqlmodel import select

from pipelines.names import QUEUE, TASK_RUN_JOB, run_events_channel
from pipelines.store.db import session_scope
from pipelines.store.models import Outbox, Run
from tests.integration.api.conftest import PIPELINE, TRUSTED_TOKEN, claim, create, finish, jobs_of

RECORD_KEYS = {
    "id", "run_id", "stage", "name", "status", "reason", "exit_code", "signal", "attempt", "duration_s",
    "started_at", "finished_at", "usage", "artifacts", "rejected_artifacts", "message",
    "tests",  # the JUnit summary (None until the job has reports)
}


def broker_messages(rds: redis.Redis) -> list[tuple[str, list[Any]]]:
    """(task name, args) of every Celery message waiting in the queue, oldest first."""
    out = []
    raw_messages: list[str] = rds.lrange(QUEUE, 0, -1)  # type: ignore[assignment]
    for raw in reversed(raw_messages):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        out.append((message["headers"]["task"], body[0]))
    return out


def test_yaml_body_creates_an_untrusted_run_and_publishes_its_first_jobs(
    client: httpx.Client, rds: redis.Redis, engine: Engine
) -> None:
    """A YAML pipeline makes a 201 run (untrusted for a plain token); the queued job is in Redis."""
    run = create(client)
    assert run["status"] == "running" and run["trust"] == "untrusted" and run["source"] == "api"
    assert [j["name"] for j in run["jobs"]] == ["build", "test"]
    assert [j["status"] for j in run["jobs"]] == ["queued", "created"]
    assert set(run["jobs"][0]) == RECORD_KEYS
    assert rds.llen(QUEUE) == 1
    assert broker_messages(rds) == [(TASK_RUN_JOB, [run["jobs"][0]["id"]])]
    with session_scope(engine) as session:
        outbox = session.exec(select(Outbox)).all()
        assert [(o.job_id, o.published_at is not None) for o in outbox] == [(run["jobs"][0]["id"], True)]


def test_json_body_with_trusted_token_keeps_inputs_and_hides_secrets(
    live_url: str, engine: Engine, rds: redis.Redis
) -> None:
    """JSON runs carry variables, ref and sha; a trusted token makes a trusted run; secrets are
    stored for the worker but appear in no response."""
    secret = "hunter2-very-secret"
    body = {"pipeline": PIPELINE, "variables": {"GREETING": "hi"}, "secrets": {"TOKEN": secret},
            "ref": "feature/x", "sha": "a" * 40}
    with httpx.Client(base_url=live_url, headers={"Authorization": f"Bearer {TRUSTED_TOKEN}"}) as c:
        response = c.post("/api/v1/runs", json=body)
        assert response.status_code == 201, response.text
        run = response.json()
        texts = [response.text, c.get(f"/api/v1/runs/{run['id']}").text,
                 c.get(f"/api/v1/jobs/{run['jobs'][0]['id']}").text]
    assert run["trust"] == "trusted"
    assert run["variables"] == {"GREETING": "hi"} and run["ref"] == "feature/x" and run["sha"] == "a" * 40
    assert "secrets" not in run
    assert all(secret not in text and "TOKEN" not in text for text in texts)
    with session_scope(engine) as session:
        stored = session.exec(select(Run)).one()
        assert stored.secrets == {"TOKEN": secret}


def test_invalid_pipeline_gets_422_with_every_problem_and_its_location(client: httpx.Client, rds: redis.Redis) -> None:
    """Every problem comes back at once, with file, line, col, severity, code, message and hint."""
    text = "build:\n  scrpt: [make]\ntest:\n  stage: nowhere\n  script: [true]\n"
    response = client.post("/api/v1/runs", content=text, headers={"Content-Type": "text/yaml"})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_pipeline"
    problems = body["problems"]
    assert {"unknown-key", "unknown-stage"} <= {p["code"] for p in problems}
    unknown = next(p for p in problems if p["code"] == "unknown-key")
    assert (unknown["file"], unknown["line"], unknown["col"], unknown["severity"]) == ("pipeline.yml", 2, 3, "error")
    assert unknown["hint"] and unknown["message"]
    stage = next(p for p in problems if p["code"] == "unknown-stage")
    assert stage["line"] == 4
    assert rds.llen(QUEUE) == 0


def test_malformed_bodies_get_400_415_or_413(client: httpx.Client) -> None:
    """Bad JSON, a JSON body of the wrong shape, an unknown content type and an oversized body
    are refused with a JSON error and nothing is created."""
    cases = [
        ({"Content-Type": "application/json"}, b"{not json", 400),
        ({"Content-Type": "application/json"}, b'{"pipeline": 3}', 400),
        ({"Content-Type": "application/json"}, b'{"pipeline": "a: b", "extra": 1}', 400),
        ({"Content-Type": "text/yaml"}, b"\xff\xfe", 400),
        ({"Content-Type": "application/octet-stream"}, b"x", 415),
        ({"Content-Type": "text/yaml"}, b"# " + b"x" * (64 * 1024), 413),
    ]
    for headers, content, status in cases:
        response = client.post("/api/v1/runs", content=content, headers=headers)
        assert response.status_code == status, (content[:20], response.text)
        assert set(response.json()) >= {"error", "message"}
        assert "Traceback" not in response.text


def test_chunked_body_over_the_cap_is_refused(client: httpx.Client) -> None:
    """A body without Content-Length is cut off at the cap too (413)."""

    def chunks() -> Any:
        for _ in range(100):
            yield b"#" * 1024

    response = client.post("/api/v1/runs", content=chunks(), headers={"Content-Type": "text/yaml"})
    assert response.status_code == 413


def test_wait_holds_the_answer_until_the_run_ends(client: httpx.Client, engine: Engine) -> None:
    """With ?wait the 201 comes when the run has ended (a worker finishing both jobs meanwhile)."""
    text = "solo:\n  script: [make]\n"

    def play_worker() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with session_scope(engine) as session:
                rows = session.exec(select(Run)).all()
            if rows:
                job_id = jobs_of(engine, rows[0].id)[0]
                time.sleep(0.3)
                finish(engine, job_id, claim(engine, job_id))
                return
            time.sleep(0.02)

    worker = threading.Thread(target=play_worker)
    worker.start()
    started = time.monotonic()
    run = create(client, text, wait=10)
    worker.join()
    assert run["status"] == "succeeded" and run["finished_at"] is not None
    assert run["jobs"][0]["exit_code"] == 0
    assert 0.25 < time.monotonic() - started < 5


def test_wait_wakes_on_the_workers_message(
    client: httpx.Client, engine: Engine, rds: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """?wait reads the run when a worker announces a finished job on the run's channel: with the
    periodic read pushed past the wait, only the message can end it early with the ended run."""
    monkeypatch.setattr("api.routes.runs.WAIT_EVENT_TIMEOUT_S", 60.0)
    text = "solo:\n  script: [make]\n"

    def play_worker() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with session_scope(engine) as session:
                rows = session.exec(select(Run)).all()
            if rows:
                job_id = jobs_of(engine, rows[0].id)[0]
                time.sleep(0.3)
                finish(engine, job_id, claim(engine, job_id))
                rds.publish(run_events_channel(rows[0].id), job_id)
                return
            time.sleep(0.02)

    worker = threading.Thread(target=play_worker)
    worker.start()
    started = time.monotonic()
    run = create(client, text, wait=8)
    worker.join()
    assert run["status"] == "succeeded" and run["finished_at"] is not None
    assert time.monotonic() - started < 6


def test_wait_gives_up_after_the_wait(client: httpx.Client) -> None:
    """An unfinished run is returned as it is once the wait has passed; waits over the bound are a 400."""
    started = time.monotonic()
    run = create(client, wait=0.3)
    assert run["status"] == "running"
    assert 0.3 <= time.monotonic() - started < 3
    too_long = client.post("/api/v1/runs?wait=999999", content=PIPELINE, headers={"Content-Type": "text/yaml"})
    assert too_long.status_code == 400 and too_long.json()["error"] == "bad_request"


def test_get_run_and_unknown_ids(client: httpx.Client) -> None:
    """A run reads back with its jobs; unknown run and job ids are 404 with a JSON error."""
    run = create(client)
    again = client.get(f"/api/v1/runs/{run['id']}").json()
    assert again["id"] == run["id"] and [j["id"] for j in again["jobs"]] == [j["id"] for j in run["jobs"]]
    for path in ("/api/v1/runs/nope", "/api/v1/jobs/nope", "/api/v1/jobs/nope/log", "/api/v1/jobs/nope/artifacts"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"] == "not_found"
    assert client.post("/api/v1/runs/nope/cancel").status_code == 404


def test_cancel_run_cancels_waiting_jobs(client: httpx.Client) -> None:
    """Cancelling a run makes its waiting jobs cancelled and the run cancelled."""
    run = create(client)
    response = client.post(f"/api/v1/runs/{run['id']}/cancel")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled" and body["cancelled"] is True
    assert [j["status"] for j in body["jobs"]] == ["cancelled", "cancelled"]


def test_cancel_job_publishes_what_it_starts(client: httpx.Client, rds: redis.Redis) -> None:
    """Cancelling a queued job can start an on_failure job; that job is published to the broker."""
    text = "stages: [a, b]\nfirst:\n  stage: a\n  script: [x]\ncleanup:\n  stage: b\n  when: on_failure\n" \
           "  script: [y]\n"
    run = create(client, text)
    first, cleanup = run["jobs"]
    rds.delete(QUEUE)
    response = client.post(f"/api/v1/jobs/{first['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled" and response.json()["reason"] == "cancelled"
    assert client.get(f"/api/v1/jobs/{cleanup['id']}").json()["status"] == "queued"
    assert broker_messages(rds) == [(TASK_RUN_JOB, [cleanup["id"]])]


def test_cancel_running_job_requests_a_stop(client: httpx.Client, engine: Engine) -> None:
    """A running job stays running after cancel; its worker sees the request at its next renewal."""
    run = create(client)
    job_id = run["jobs"][0]["id"]
    claim(engine, job_id)
    response = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "running"
    finish(engine, job_id, 1, status="failed", reason="cancelled", exit_code=None, signal=15)
    assert client.get(f"/api/v1/jobs/{job_id}").json()["status"] == "cancelled"
