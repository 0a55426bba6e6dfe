"""A job's live log across attempts, as the worker writes it (``worker.logstream.RedisLog``) and
the API reads it: an attempt its ``retry:`` tries again adds a line, not an end, so a follower
reads on into the next attempt; the stream lives while an attempt runs and expires once one has
ended."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import redis
from sqlalchemy.engine import Engine

from pipelines.names import LOG_STREAM_TTL_S, log_stream_key
from tests.integration.api.conftest import claim, create, finish
from tests.integration.api.test_logs import sse_events
from worker.logstream import RedisLog

RETRIED = "flaky:\n  retry: 1\n  script: [make]\n"


def test_a_follower_reads_on_past_a_retried_attempt_to_the_last_attempts_end(
    client: httpx.Client, engine: Engine, rds: redis.Redis
) -> None:
    """Attempt 1 writes, fails and is retried: the stream gets sandpit's line saying so and an
    expiry, no eof. A follower that joins then waits through the queue; attempt 2 removes the
    expiry when it starts, writes and ends the stream. The follower gets both attempts, the line
    between them, and one ``end`` with attempt 2's status."""
    job_id: str = create(client, RETRIED)["jobs"][0]["id"]
    key = log_stream_key(job_id)
    first = RedisLog(rds, job_id)
    assert claim(engine, job_id) == 1
    first.sink()("out", b"attempt one\n")
    assert finish(engine, job_id, 1, status="failed", reason="exit_code", exit_code=2) == [job_id]  # retried
    first.next_attempt(1, "failed", "exit_code", 2)
    assert 0 < rds.ttl(key) <= LOG_STREAM_TTL_S

    events: list[dict[str, Any]] = []

    def follow() -> None:
        with client.stream("GET", f"/api/v1/jobs/{job_id}/log", headers={"Accept": "text/event-stream"}) as r:
            events.extend(sse_events(r))

    follower = threading.Thread(target=follow)
    follower.start()
    second = RedisLog(rds, job_id)
    assert claim(engine, job_id) == 2
    second.resume(2)
    assert rds.ttl(key) == -1  # no expiry while an attempt runs
    second.sink()("out", b"attempt two\n")
    finish(engine, job_id, 2)
    second.end("succeeded")
    follower.join(timeout=30)
    assert not follower.is_alive()
    assert [e["event"] for e in events] == ["log", "log", "log", "end"]
    assert [(e["data"]["s"], e["data"]["d"]) for e in events[:3]] == [
        ("out", "attempt one\n"),
        ("sys", "[sandpit] attempt 1 failed (exit_code 2); retry: attempt 2 follows\n"),
        ("out", "attempt two\n"),
    ]
    assert events[3]["data"] == {"status": "succeeded"}
    assert 0 < rds.ttl(key) <= LOG_STREAM_TTL_S


def test_plain_text_of_a_job_between_attempts_holds_the_retry_line(
    client: httpx.Client, engine: Engine, rds: redis.Redis
) -> None:
    """Read while the retried job waits for its next attempt, the plain log is attempt 1's output
    and the line saying attempt 2 follows (the answer ends: nothing is followed)."""
    job_id: str = create(client, RETRIED)["jobs"][0]["id"]
    stream = RedisLog(rds, job_id)
    claim(engine, job_id)
    stream.sink()("err", b"boom\n")
    finish(engine, job_id, 1, status="error", reason="infra_error", exit_code=None)
    stream.next_attempt(1, "error", "infra_error", None)
    text = client.get(f"/api/v1/jobs/{job_id}/log").text
    assert text == "boom\n[sandpit] attempt 1 error (infra_error); retry: attempt 2 follows\n"
