"""A pipeline with ``services:`` through the real service: stored, queued through Redis, run by a
``sandpit worker`` process (Celery), its service beside it; the stored result names the service's log."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.service.conftest import Service
from worker.sandbox.logs import read_log

PIPELINE = """
test:
  image: debian
  variables:
    GREETING: hello
  services:
    - name: python
      alias: web
      command: [python3, -m, http.server, "8000"]
      variables: {HEALTHCHECK_TCP_PORT: "8000"}
  script:
    - 'exec 3<>/dev/tcp/web/8000 && printf "GET / HTTP/1.0\\r\\n\\r\\n" >&3 && head -1 <&3'
    - 'exec 4<>/dev/tcp/localhost/8000 && echo "localhost answers"'
"""


def text_of(log: Path) -> str:
    return "".join(text for _t, _s, text in read_log(log))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_job_with_a_service_through_a_worker(service: Service):
    """The worker runs the service beside the job: reached by its alias and on localhost, waited
    for, its own log named in the stored result (and not mixed into the job's)."""
    service.start_worker(concurrency=1)
    run_id = service.submit(PIPELINE)
    assert service.wait(run_id, timeout=120) == "succeeded", service.failures([run_id])
    (job,) = service.jobs(run_id).values()
    (svc,) = job.result["services"]
    assert svc["alias"] == "web" and svc["name"] == "python" and svc["ready"] is True
    own = Path(svc["log"])
    try:
        assert '"GET / HTTP/1.0" 200' in text_of(own)
        job_log = text_of(Path(job.result["log"]))
        assert "HTTP/1.0 200" in job_log and "localhost answers" in job_log
        assert '"GET / HTTP/1.0" 200' not in job_log
    finally:
        own.unlink(missing_ok=True)
