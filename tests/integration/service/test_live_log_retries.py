"""A job's live log across its attempts, with a real worker, Redis, containers and the API: a
follower of the SSE log of a job that fails once and passes on its automatic ``retry:`` reads
both attempts (and the line between them) up to the one end event of the last attempt; a retry
a person asks for afterwards is followed to its end the same way.

The job fails on its first attempt and passes on its next through a real cache (``when:
always``): the first attempt leaves a marker there, the next finds it.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import httpx
import pytest

from tests.integration.api.conftest import TRUSTED_TOKEN
from tests.integration.service.conftest import Service
from tests.integration.ui.browsing import ApiProcess

_STREAM_ID = re.compile(r"[0-9]+-[0-9]+")
FLAKY = """
flaky:
  retry: {{max: 1, exit_codes: [3]}}
  cache: {{key: marker-{key}, paths: [marker], when: always}}
  script:
    - |
      if [ -f marker ]; then echo "the next try passes"; sleep 1; exit 0; fi
      echo tried > marker; echo "the first try fails"; sleep 1; exit 3
"""


def _follow(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """Every SSE event of the job's log until the stream's end: ``{"id"?, "event", "data"}``."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    with client.stream("GET", f"/api/v1/jobs/{job_id}/log", headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line:
                if current:
                    events.append(current)
                current = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                current[field] = json.loads(value) if field == "data" else value
    return events


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(e["data"]["d"] for e in events if e["event"] == "log")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_follower_reads_every_attempt_of_a_retried_job_to_its_one_end(service: Service) -> None:
    """Following from the first attempt, the SSE log holds the first attempt's output, sandpit's
    line that attempt 1 failed and attempt 2 follows, then the second attempt's output, and ends
    once, with ``succeeded``. Every entry came from the live stream (ids ``<ms>-<seq>``, not the
    finished job's file). A retry through the API later is followed the same way: its stream
    starts afresh with the new attempt and ends with it."""
    service.start_worker(concurrency=1)
    api = ApiProcess(service)  # its own process, as deployed (its SQLite connections are its own)
    auth = {"Authorization": f"Bearer {TRUSTED_TOKEN}"}
    try:
        with httpx.Client(base_url=api.base, headers=auth, timeout=120) as client:
            run_id = service.submit(FLAKY.format(key=uuid.uuid4().hex))
            job_id = service.jobs(run_id)["flaky"].id  # followed from before its first attempt starts
            events = _follow(client, job_id)
            assert service.wait(run_id) == "succeeded" and service.jobs(run_id)["flaky"].attempt == 2
            retried = client.post(f"/api/v1/jobs/{job_id}/retry")
            assert retried.status_code == 200, retried.text
            again = _follow(client, job_id)
    finally:
        api.stop()
    assert [e["event"] for e in events].count("end") == 1
    assert events[-1] == {"event": "end", "data": {"status": "succeeded"}}
    assert [e for e in events if e["event"] == "log" and not _STREAM_ID.fullmatch(e.get("id", ""))] == []
    text = _text(events)
    first, boundary, nxt = (text.index("\nthe first try fails\n"),
                            text.index("\n[sandpit] attempt 1 failed (exit_code 3); retry: attempt 2 follows\n"),
                            text.index("\nthe next try passes\n"))
    assert first < boundary < nxt

    assert again[-1] == {"event": "end", "data": {"status": "succeeded"}}
    assert [e["event"] for e in again].count("end") == 1
    assert [e for e in again if e["event"] == "log" and not _STREAM_ID.fullmatch(e.get("id", ""))] == []
    later = _text(again)
    assert "\nthe next try passes\n" in later and "\nthe first try fails\n" not in later
    assert "[sandpit] attempt" not in later
    assert service.wait(run_id) == "succeeded" and service.jobs(run_id)["flaky"].attempt == 3
