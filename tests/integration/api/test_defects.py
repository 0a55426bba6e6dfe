"""Smaller API defects (issue 10 §5), each as a class, on SQLite and PostgreSQL: unstorable
characters and names, cancelling what has ended, log cursors, why a job failed, HEAD, and a broker
outage logged one line per failure."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
import redis
from sqlalchemy.engine import Engine

from api.settings import ApiSettings
from tests.integration.api.conftest import (
    PIPELINE,
    claim,
    create,
    finish,
    free_port,
    jobs_of,
    serve_in_thread,
    write_eof,
    write_stream,
)

YAML = {"Content-Type": "application/yaml"}


# --- characters and names no database can hold --------------------------------------------

@pytest.mark.parametrize(
    ("text", "code", "line"),
    [
        ('"build\\0": {script: [make]}\n', "invalid-character", 1),  # was 500 on PostgreSQL, 201 on SQLite
        ('build:\n  script: [make]\n  stage: "te\\0st"\n', "invalid-character", 3),
        ('build:\n  script: ["make \\0"]\n', "invalid-character", 2),
        ('build:\n  script: [make]\n  variables: {"A\\e": x}\n', "invalid-character", 3),
        ('build:\n  script: [make]\n  variables: {A: "\\e[2J"}\n', "invalid-character", 3),
        ("b" * 300 + ":\n  script: [make]\n", "name-too-long", 1),  # was 500 on PostgreSQL (varchar 255)
        ("b" * 1100 + ":\n  script: [make]\n", "name-too-long", 1),  # was a YAML syntax error
    ],
)
def test_unstorable_pipelines_get_422_on_every_database(
    client: httpx.Client, engine: Engine, text: str, code: str, line: int
) -> None:
    """The same answer on both databases: 422 with the problem at its line, never a 500 or a 201."""
    response = client.post("/api/v1/runs", content=text, headers=YAML)
    assert response.status_code == 422, response.text[:300]
    problems = response.json()["problems"]
    assert [(p["code"], p["line"]) for p in problems if p["code"] == code] == [(code, line)]
    assert "yaml-syntax" not in {p["code"] for p in problems}
    assert client.get("/api/v1/runs/nope").status_code == 404  # the API is still fine


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"pipeline": PIPELINE, "variables": {"A": "x\u0000y"}}, "variables.A"),
        ({"pipeline": PIPELINE, "variables": {"A\u001b": "x"}}, "variables"),
        ({"pipeline": PIPELINE, "variables": {"A": "\ud800"}}, "variables.A"),
        ({"pipeline": PIPELINE, "secrets": {"T": "s\u0000"}}, "secrets"),
        ({"pipeline": PIPELINE, "ref": "main\u0000"}, "ref"),
        ({"pipeline": PIPELINE, "ref": "ma\u001bin"}, "ref"),
        ({"pipeline": PIPELINE, "sha": "ab\u0007"}, "sha"),
        ({"pipeline": PIPELINE, "message": "fix\u0000"}, "message"),
        ({"pipeline": PIPELINE + "# \u0000\n"}, "pipeline"),
    ],
)
def test_control_characters_in_request_fields_get_422(
    client: httpx.Client, engine: Engine, body: dict[str, object], field: str
) -> None:
    """Every text field of a JSON run request is checked; the problem names the field."""
    # json.dumps escapes what httpx could not encode (a lone surrogate) as \\uXXXX, as any client may
    response = client.post("/api/v1/runs", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["error"] == "invalid_input"
    assert [p["field"] for p in answer["problems"]] == [field]
    assert "\u001b" not in response.text and "\\u001b" not in response.text.replace("U+001B", "")


def test_newlines_and_tabs_stay_allowed_in_values(client: httpx.Client) -> None:
    """Multi-line values (a certificate, a commit message) are fine."""
    response = client.post("/api/v1/runs", json={"pipeline": PIPELINE, "variables": {"CERT": "a\nb\tc"},
                                                 "message": "subject\n\nbody\r\n"})
    assert response.status_code == 201, response.text


# --- cancelling what has ended --------------------------------------------------------------

def test_cancelling_a_finished_run_is_409_and_changes_nothing(client: httpx.Client, engine: Engine) -> None:
    """A succeeded run stays succeeded (it was rewritten to `cancelled`); the answer says why."""
    run = create(client)
    for job_id in jobs_of(engine, run["id"]):
        finish(engine, job_id, claim(engine, job_id))
    before = client.get(f"/api/v1/runs/{run['id']}").json()
    assert before["status"] == "succeeded" and before["finished_at"] is not None
    response = client.post(f"/api/v1/runs/{run['id']}/cancel")
    assert response.status_code == 409, response.text
    assert response.json()["error"] == "run_finished" and "already finished (succeeded)" in response.json()["message"]
    after = client.get(f"/api/v1/runs/{run['id']}").json()
    assert after == before


def test_cancelling_a_finished_job_is_409(client: httpx.Client, engine: Engine) -> None:
    """A job that has ended is left as it is; its run goes on."""
    run = create(client)
    first, second = jobs_of(engine, run["id"])
    finish(engine, first, claim(engine, first))
    response = client.post(f"/api/v1/jobs/{first}/cancel")
    assert response.status_code == 409 and response.json()["error"] == "job_finished"
    assert client.get(f"/api/v1/jobs/{first}").json()["status"] == "succeeded"
    assert client.get(f"/api/v1/jobs/{second}").json()["status"] == "queued"
    assert client.post(f"/api/v1/runs/{run['id']}/cancel").status_code == 200  # unfinished: cancelled


# --- log cursors ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "cursor",
    [
        "99999999999999999999-0",  # 20 digits, past 64 bits: Redis refused it after the 200
        "1-99999999999999999999",
        "18446744073709551615-18446744073709551615",
        "\u0661-\u0662",  # Arabic-Indic digits match \d
        "12",
        "L",
        "L1x",
        "L-1",
        "1-2-3",
        "after",
    ],
)
def test_bad_log_cursors_are_400(client: httpx.Client, engine: Engine, rds: redis.Redis, cursor: str) -> None:
    """Both id forms (stream entry `<ms>-<seq>` and file line `L<n>`) are validated, in ?after= and
    in Last-Event-ID, before the answer starts."""
    run = create(client)
    job_id = jobs_of(engine, run["id"])[0]
    write_stream(rds, job_id, [("out", "hello\n")])
    write_eof(rds, job_id)
    response = client.get(f"/api/v1/jobs/{job_id}/log", params={"after": cursor})
    assert response.status_code == 400, response.text
    assert "?after=" in response.json()["message"]
    if cursor.isascii():  # a header carries ASCII only
        header = client.get(f"/api/v1/jobs/{job_id}/log", headers={"Last-Event-ID": cursor})
        assert header.status_code == 400, header.text


def test_good_log_cursors_still_work(client: httpx.Client, engine: Engine, rds: redis.Redis) -> None:
    """A real entry id resumes after it; L0 and an empty cursor give everything."""
    run = create(client)
    job_id = jobs_of(engine, run["id"])[0]
    ids = write_stream(rds, job_id, [("out", "one\n"), ("out", "two\n")])
    write_eof(rds, job_id)
    assert client.get(f"/api/v1/jobs/{job_id}/log", params={"after": ids[0]}).text == "two\n"
    assert client.get(f"/api/v1/jobs/{job_id}/log", params={"after": "18446744073709551615-0"}).text == ""
    assert client.get(f"/api/v1/jobs/{job_id}/log", params={"after": ""}).text == "one\ntwo\n"


# --- why a job ended ----------------------------------------------------------------------

def test_every_job_that_did_not_succeed_says_why(client: httpx.Client, engine: Engine) -> None:
    """invalid_spec carries the worker's message; an exit code and a skipped dependent get a sentence;
    a job that succeeded or still waits has none."""
    run = create(client, "a:\n  stage: build\n  script: [x]\nb:\n  stage: test\n  script: [y]\n")
    a, b = jobs_of(engine, run["id"])
    assert client.get(f"/api/v1/jobs/{a}").json()["message"] is None
    finish(engine, a, claim(engine, a), status="failed", reason="invalid_spec", exit_code=None,
           message="image 'nope' is not in the image store")
    job = client.get(f"/api/v1/jobs/{a}").json()
    assert (job["status"], job["reason"], job["message"]) == ("failed", "invalid_spec",
                                                             "image 'nope' is not in the image store")
    assert client.get(f"/api/v1/jobs/{b}").json()["message"] == "a job it depends on failed"
    other = create(client, "c: {script: [x]}\n")
    [c] = jobs_of(engine, other["id"])
    finish(engine, c, claim(engine, c), status="failed", reason="exit_code", exit_code=3)
    jobs = client.get(f"/api/v1/runs/{other['id']}").json()["jobs"]
    assert jobs[0]["message"] == "the script exited with status 3"


# --- HEAD -----------------------------------------------------------------------------------

def test_head_answers_wherever_get_does(client: httpx.Client, anon: httpx.Client) -> None:
    """HEAD /healthz (was 405), /metrics and the API's GET resources answer like GET, without a body."""
    run = create(client)
    for c, path in ((anon, "/healthz"), (anon, "/metrics"), (client, f"/api/v1/runs/{run['id']}"),
                    (client, f"/api/v1/jobs/{run['jobs'][0]['id']}"),
                    (client, f"/api/v1/jobs/{run['jobs'][0]['id']}/artifacts")):
        got, head = c.get(path), c.head(path)
        assert head.status_code == got.status_code == 200, (path, head.status_code)
        assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"]
    assert anon.head("/api/v1/runs/x").status_code == 401
    assert client.head("/api/v1/runs/nope").status_code == 404
    paths = anon.get("/api/v1/openapi.json").json()["paths"]
    assert not any("head" in operations for operations in paths.values())


# --- broker outage ----------------------------------------------------------------------------

def test_a_broker_outage_logs_one_line_per_failed_publish(
    settings: ApiSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """With the broker away every POST still succeeds; each failed publish is one warning line
    with a running count, no traceback chain."""
    import dataclasses

    away = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    caplog.set_level(logging.INFO)
    with serve_in_thread(away) as server, httpx.Client(
        base_url=server.url, headers={"Authorization": "Bearer tok-user-1234"}, timeout=60
    ) as user:
        for _ in range(3):
            response = user.post("/api/v1/runs", content=PIPELINE, headers=YAML)
            assert response.status_code == 201, response.text
    failures = [r for r in caplog.records if r.name == "sandpit.api" and "publishing" in r.getMessage()]
    assert len(failures) == 3
    for number, record in enumerate(failures, start=1):
        text = record.getMessage()
        assert "\n" not in text and record.exc_info is None and record.exc_text is None
        assert f"failure {number} in a row, {number} in all" in text and "outbox sweeper will retry" in text
    assert not [r for r in caplog.records if r.exc_info and r.name.startswith(("sandpit", "celery", "kombu"))]
