"""Job logs: plain text, follow, Server-Sent Events and Last-Event-ID resume; the test plays the
worker by writing Redis stream entries and the JSON-lines log file."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import redis
from sqlalchemy.engine import Engine

from api.settings import ApiSettings
from tests.integration.api.conftest import claim, create, finish, write_eof, write_log_file, write_stream

CHUNKS = [("out", "line 1\n"), ("err", "warning 2\n"), ("out", "line 3\n")]


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    """Parse an SSE body into events ``{"id", "event", "data"}`` (comments skipped)."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in response.iter_lines():
        if not line:
            if current:
                events.append(current)
            current = {}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(": ")
        current[field] = json.loads(value) if field == "data" else value
    return events


def running_job(client: httpx.Client, engine: Engine) -> str:
    job_id: str = create(client, "solo:\n  script: [make]\n")["jobs"][0]["id"]
    claim(engine, job_id)
    return job_id


def finished_job(client: httpx.Client, engine: Engine, settings: ApiSettings) -> str:
    job_id = running_job(client, engine)
    log_path = write_log_file(settings.state_dir / "logs" / f"{job_id}.jsonl", CHUNKS)
    finish(engine, job_id, 1, log=log_path)
    return job_id


def test_plain_log_of_a_finished_job_comes_from_the_file(
    client: httpx.Client, engine: Engine, settings: ApiSettings
) -> None:
    """A finished job's log is its persisted file, as plain text in order."""
    job_id = finished_job(client, engine, settings)
    response = client.get(f"/api/v1/jobs/{job_id}/log")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert response.text == "line 1\nwarning 2\nline 3\n"


def test_plain_log_of_a_running_job_is_the_stream_so_far(
    client: httpx.Client, engine: Engine, rds: redis.Redis
) -> None:
    """Without follow, a running job's log is what the live stream holds now; the answer ends."""
    job_id = running_job(client, engine)
    write_stream(rds, job_id, CHUNKS[:2])
    assert client.get(f"/api/v1/jobs/{job_id}/log").text == "line 1\nwarning 2\n"


def test_follow_streams_the_whole_log_then_the_live_tail_until_eof(
    client: httpx.Client, engine: Engine, rds: redis.Redis
) -> None:
    """A follower that joins mid-run gets what was written before it joined, then each new chunk,
    and the response ends at the worker's eof entry."""
    job_id = running_job(client, engine)
    write_stream(rds, job_id, CHUNKS[:1])

    def worker() -> None:
        time.sleep(0.3)
        write_stream(rds, job_id, CHUNKS[1:])
        time.sleep(0.2)
        write_eof(rds, job_id)

    thread = threading.Thread(target=worker)
    thread.start()
    started = time.monotonic()
    with client.stream("GET", f"/api/v1/jobs/{job_id}/log", params={"follow": 1}) as response:
        text = b"".join(response.iter_bytes()).decode()
    thread.join()
    assert text == "line 1\nwarning 2\nline 3\n"
    assert 0.4 < time.monotonic() - started < 5


def test_follow_ends_when_the_job_ends_without_eof(client: httpx.Client, engine: Engine, rds: redis.Redis) -> None:
    """A worker that died never writes eof; the follower stops once the database says the job ended."""
    job_id = running_job(client, engine)
    write_stream(rds, job_id, CHUNKS[:1])
    threading.Timer(0.3, lambda: finish(engine, job_id, 1, status="error", reason="worker_lost")).start()
    with client.stream("GET", f"/api/v1/jobs/{job_id}/log", params={"follow": "true"}) as response:
        text = b"".join(response.iter_bytes()).decode()
    assert text == "line 1\n"


def test_sse_events_carry_stream_ids_and_resume_after_last_event_id(
    client: httpx.Client, engine: Engine, rds: redis.Redis
) -> None:
    """SSE gives one event per chunk with the stream entry id, then an end event; a client
    reconnecting with Last-Event-ID gets only what follows."""
    job_id = running_job(client, engine)
    ids = write_stream(rds, job_id, CHUNKS)
    write_eof(rds, job_id, "succeeded")
    sse = {"Accept": "text/event-stream"}
    with client.stream("GET", f"/api/v1/jobs/{job_id}/log", headers=sse) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert [e.get("id") for e in events] == [*ids, None]
    assert [e["data"]["d"] for e in events[:3]] == [d for _, d in CHUNKS]
    assert [e["data"]["s"] for e in events[:3]] == ["out", "err", "out"]
    assert events[-1] == {"event": "end", "data": {"status": "succeeded"}}
    with client.stream("GET", f"/api/v1/jobs/{job_id}/log", headers={**sse, "Last-Event-ID": ids[0]}) as response:
        resumed = sse_events(response)
    assert [e.get("id") for e in resumed] == [ids[1], ids[2], None]


def test_sse_live_follower_gets_entries_as_they_come(client: httpx.Client, engine: Engine, rds: redis.Redis) -> None:
    """An SSE follower connected before any output receives the chunks written afterwards."""
    job_id = running_job(client, engine)

    def worker() -> None:
        time.sleep(0.2)
        write_stream(rds, job_id, CHUNKS)
        write_eof(rds, job_id)

    threading.Thread(target=worker).start()
    with client.stream("GET", f"/api/v1/jobs/{job_id}/log", headers={"Accept": "text/event-stream"}) as response:
        events = sse_events(response)
    assert [e["data"].get("d") for e in events[:-1]] == [d for _, d in CHUNKS]


def test_sse_of_a_finished_job_uses_line_ids_and_resumes(
    client: httpx.Client, engine: Engine, settings: ApiSettings
) -> None:
    """From the file, events are numbered L1.. and Last-Event-ID: L2 resumes at line 3."""
    job_id = finished_job(client, engine, settings)
    sse = {"Accept": "text/event-stream"}
    with client.stream("GET", f"/api/v1/jobs/{job_id}/log", headers=sse) as response:
        events = sse_events(response)
    assert [e.get("id") for e in events] == ["L1", "L2", "L3", None]
    assert events[-1]["data"] == {"status": "succeeded"}
    with client.stream("GET", f"/api/v1/jobs/{job_id}/log", headers={**sse, "Last-Event-ID": "L2"}) as response:
        assert [e["data"].get("d") for e in sse_events(response)] == ["line 3\n", None]


def test_resuming_a_stream_id_after_the_job_ended_continues_in_the_stream(
    client: httpx.Client, engine: Engine, settings: ApiSettings, rds: redis.Redis
) -> None:
    """A follower that lost its connection near the end resumes in the stream, not from line 1."""
    job_id = running_job(client, engine)
    ids = write_stream(rds, job_id, CHUNKS)
    write_eof(rds, job_id)
    log_path = write_log_file(settings.state_dir / "logs" / f"{job_id}.jsonl", CHUNKS)
    finish(engine, job_id, 1, log=log_path)
    headers = {"Accept": "text/event-stream", "Last-Event-ID": ids[1]}
    with client.stream("GET", f"/api/v1/jobs/{job_id}/log", headers=headers) as response:
        assert [e.get("id") for e in sse_events(response)] == [ids[2], None]


def test_a_garbage_last_event_id_is_a_400(client: httpx.Client, engine: Engine) -> None:
    job_id = running_job(client, engine)
    response = client.get(f"/api/v1/jobs/{job_id}/log", headers={"Last-Event-ID": "../../etc"})
    assert response.status_code == 400 and response.json()["error"] == "bad_request"


def test_a_job_without_output_has_an_empty_log(client: httpx.Client) -> None:
    """A queued job with no output has an empty log (plain), not an error."""
    job_id = create(client, "solo:\n  script: [make]\n")["jobs"][0]["id"]
    assert client.get(f"/api/v1/jobs/{job_id}/log").text == ""
