"""Authentication, health, metrics, OpenAPI and error shapes."""

from __future__ import annotations

import threading
import time

import httpx
import redis
from sqlalchemy.engine import Engine
from sqlmodel import select

from api.settings import ApiSettings
from pipelines.store.db import session_scope
from pipelines.store.models import Job
from tests.integration.api.conftest import (
    TRUSTED_TOKEN,
    USER_TOKEN,
    claim,
    create,
    finish,
    free_port,
    serve_in_thread,
)


def test_api_routes_need_a_configured_bearer_token(anon: httpx.Client) -> None:
    """No header, another scheme, or an unknown token: 401 with a JSON error and WWW-Authenticate."""
    cases = [{}, {"Authorization": f"Basic {USER_TOKEN}"}, {"Authorization": "Bearer wrong"},
             {"Authorization": f"Bearer {USER_TOKEN}x"}, {"Authorization": "Bearer"}]
    for headers in cases:
        for method, path in [("GET", "/api/v1/runs/x"), ("POST", "/api/v1/runs"), ("GET", "/api/v1/jobs/x/log")]:
            response = anon.request(method, path, headers=headers)
            assert response.status_code == 401, (headers, path)
            assert response.json()["error"] == "unauthenticated"
            assert response.headers["www-authenticate"] == "Bearer"


def test_every_configured_token_is_accepted(anon: httpx.Client) -> None:
    """A right token passes authentication (the unknown run is then a 404, not a 401)."""
    for token in (USER_TOKEN, TRUSTED_TOKEN):
        response = anon.get("/api/v1/runs/x", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 404


def test_healthz_is_open_and_ok_when_database_and_redis_answer(anon: httpx.Client) -> None:
    response = anon.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True, "database": "ok", "redis": "ok"}


def test_redis_down_gives_503_health_but_runs_are_still_created(settings: ApiSettings) -> None:
    """With nothing listening at the Redis URL, /healthz says so with a 503; a new run is still
    stored (201) and its job stays in the outbox for the worker's sweeper to publish."""
    down = ApiSettings(database_url=settings.database_url, redis_url=f"redis://127.0.0.1:{free_port()}/0",
                       state_dir=settings.state_dir, tokens=settings.tokens)
    auth = {"Authorization": f"Bearer {USER_TOKEN}"}
    with serve_in_thread(down) as server, httpx.Client(base_url=server.url, headers=auth, timeout=30) as c:
        response = c.get("/healthz")
        started = time.monotonic()
        created = c.post("/api/v1/runs", content="solo:\n  script: [make]\n", headers={"Content-Type": "text/yaml"})
        took = time.monotonic() - started
        pending = c.get("/metrics").text
    # the database owns the run: it is created, and its job waits in the outbox for the sweeper
    assert created.status_code == 201, created.text
    assert took < 10
    assert "sandpit_outbox_pending 1" in pending.splitlines()
    assert response.status_code == 503
    body = response.json()
    assert body["ok"] is False and body["database"] == "ok" and body["redis"].startswith("unreachable")


def test_wait_without_redis_polls_the_database(settings: ApiSettings, engine: Engine) -> None:
    """With Redis unreachable, ?wait cannot listen for the workers' messages: it polls the
    database and still answers with the ended run once its job has finished."""
    down = ApiSettings(database_url=settings.database_url, redis_url=f"redis://127.0.0.1:{free_port()}/0",
                       state_dir=settings.state_dir, tokens=settings.tokens)
    auth = {"Authorization": f"Bearer {USER_TOKEN}"}
    done = threading.Event()

    def play_worker() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not done.is_set():
            with session_scope(engine) as session:
                job_ids = session.exec(select(Job.id)).all()
            if job_ids:
                time.sleep(0.3)
                finish(engine, job_ids[0], claim(engine, job_ids[0]))
                return
            time.sleep(0.02)

    worker = threading.Thread(target=play_worker)
    worker.start()
    try:
        with serve_in_thread(down) as server, httpx.Client(base_url=server.url, headers=auth, timeout=60) as c:
            response = c.post("/api/v1/runs", params={"wait": 20}, content="solo:\n  script: [make]\n",
                              headers={"Content-Type": "text/yaml"})
    finally:
        done.set()
        worker.join()
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "succeeded" and response.json()["finished_at"] is not None


def test_healthz_is_503_when_the_database_is_down(settings: ApiSettings) -> None:
    broken = ApiSettings(database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/none",
                         redis_url=settings.redis_url, state_dir=settings.state_dir, tokens=settings.tokens)
    with serve_in_thread(broken) as server, httpx.Client(base_url=server.url) as c:
        response = c.get("/healthz")
    assert response.status_code == 503 and response.json()["database"].startswith("unreachable")


def test_metrics_count_runs_jobs_and_the_queue(
    client: httpx.Client, anon: httpx.Client, engine: Engine, rds: redis.Redis
) -> None:
    """Prometheus text: runs and jobs by status, outbox pending, broker queue length."""
    run = create(client)
    claim(engine, run["jobs"][0]["id"])
    response = anon.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    lines = set(response.text.splitlines())
    assert 'sandpit_runs{status="running"} 1' in lines
    assert 'sandpit_jobs{status="running"} 1' in lines and 'sandpit_jobs{status="created"} 1' in lines
    assert "sandpit_outbox_pending 0" in lines
    assert "sandpit_broker_queue_length 1" in lines
    assert "# TYPE sandpit_jobs gauge" in lines


def test_openapi_is_served_and_describes_the_routes(anon: httpx.Client) -> None:
    response = anon.get("/api/v1/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/api/v1/runs", "/api/v1/runs/{run_id}", "/api/v1/runs/{run_id}/cancel", "/api/v1/jobs/{job_id}",
                 "/api/v1/jobs/{job_id}/log", "/api/v1/jobs/{job_id}/artifacts",
                 "/api/v1/jobs/{job_id}/artifacts/{path}", "/api/v1/jobs/{job_id}/cancel"):
        assert path in paths, path
    assert "application/yaml" in paths["/api/v1/runs"]["post"]["requestBody"]["content"]
    assert "secrets" not in response.json()["components"]["schemas"]["RunPublic"]["properties"]


def test_unknown_routes_are_json_404(anon: httpx.Client) -> None:
    response = anon.get("/nothing/here")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


class ExplodingPublisher:
    def publish(self, job_ids: object) -> None:
        raise RuntimeError("boom: internal detail")

    def close(self) -> None:
        pass


def test_an_unexpected_error_is_a_500_without_a_traceback(settings: ApiSettings) -> None:
    """A bug deep inside gives a JSON 500 that reveals nothing of the error."""
    with serve_in_thread(settings, publisher=ExplodingPublisher()) as server, httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {USER_TOKEN}"}
    ) as c:
        response = c.post("/api/v1/runs", content="solo:\n  script: [make]\n", headers={"Content-Type": "text/yaml"})
    assert response.status_code == 500
    assert response.json() == {"error": "internal", "message": "internal error; see the server log"}
    assert "boom" not in response.text and "Traceback" not in response.text
