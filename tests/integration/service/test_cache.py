"""``cache:`` through the service: saved after a job, restored before the next, kept apart by trust."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.service.conftest import Service

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

WRITE = """
fill:
  cache: {key: deps-v1, paths: [.deps/]}
  script:
    - mkdir -p .deps && echo "cached by $RUN_NAME" > .deps/lib.txt
    - ln -s /etc/shadow .deps/evil
"""
READ = """
use:
  cache: {key: deps-v1, paths: [.deps/], policy: pull}
  script:
    - cat .deps/lib.txt
    - test ! -e .deps/evil
"""
MISS = """
use:
  cache: {key: deps-v1, paths: [.deps/], policy: pull}
  script:
    - test ! -e .deps/lib.txt
"""


def test_cache_saved_then_restored_and_links_never_cached(service: Service):
    service.start_worker()
    assert service.wait(service.submit(WRITE, variables={"RUN_NAME": "first"})) == "succeeded"
    run_id = service.submit(READ)
    assert service.wait(run_id) == "succeeded"
    job = service.jobs(run_id)["use"]
    assert "cached by first" in Path(job.log_path).read_text()  # type: ignore[arg-type]


def test_untrusted_cache_never_feeds_a_trusted_run(service: Service):
    service.start_worker()
    assert service.wait(service.submit(WRITE, variables={"RUN_NAME": "stranger"}, trust="untrusted")) == "succeeded"
    assert service.wait(service.submit(MISS, trust="trusted")) == "succeeded"  # nothing restored
    assert service.wait(service.submit(READ, trust="untrusted")) == "succeeded"
