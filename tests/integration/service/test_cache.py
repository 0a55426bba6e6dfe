"""``cache:`` through the service: saved after a job, restored before the next, kept apart by trust."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from tests.integration.service.conftest import Service
from tests.sandbox.conftest import TEST_STATE

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


def stored(content: bytes) -> Path:
    sha = hashlib.sha256(content).hexdigest()
    return TEST_STATE / "artifacts" / sha[:2] / sha


def test_tampered_cache_file_is_never_restored(service: Service):
    """A cached file whose stored bytes no longer hash to its sha256 is left out of the restore:
    the next job never gets bytes that are not what was cached."""
    service.start_worker()
    name = uuid.uuid4().hex  # content no other test stores
    assert service.wait(service.submit(WRITE, variables={"RUN_NAME": name})) == "succeeded"
    path = stored(f"cached by {name}\n".encode())
    assert path.is_file()
    try:
        with open(path, "r+b") as f:  # same size, other bytes
            f.write(b"CACHED")
        run_id = service.submit(MISS)
        assert service.wait(run_id) == "succeeded"  # .deps/lib.txt was not restored
    finally:
        path.unlink(missing_ok=True)  # the store is shared with other tests: leave nothing damaged


PRODUCE = """
stages: [build, use]
build:
  stage: build
  script: [mkdir -p out, "printf '%s' \\"$CONTENT\\" > out/blob"]
  artifacts: {paths: [out/blob]}
use:
  stage: use
  script: ["test \\"$(cat out/blob)\\" = \\"$CONTENT\\""]
"""


def test_planted_poison_in_the_store_is_replaced(service: Service):
    """A file already at the sha256 of a job's artifact with other bytes (planted or torn) is
    replaced when the job keeps that content: the dependent job gets the job's own bytes."""
    service.start_worker()
    content = f"artifact {uuid.uuid4().hex}"
    path = stored(content.encode())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"X" * len(content))
    try:
        run_id = service.submit(PRODUCE, variables={"CONTENT": content})
        assert service.wait(run_id) == "succeeded", service.jobs(run_id)
        assert path.read_bytes() == content.encode()
    finally:
        path.unlink(missing_ok=True)


TWO_FILES = """
fill:
  cache: {key: two-v1, paths: [.deps/]}
  script:
    - mkdir -p .deps && echo "kept $RUN_NAME" > .deps/a.txt && echo "gone $RUN_NAME" > .deps/b.txt
"""
NONE_OF_THEM = """
use:
  cache: {key: two-v1, paths: [.deps/], policy: pull}
  script:
    - test ! -e .deps/a.txt
    - test ! -e .deps/b.txt
"""


def test_a_cache_with_a_file_gone_is_a_miss_not_half_a_tree(service: Service):
    """One stored file of a cache is gone (an expired artifact with the same bytes took it): the
    next job gets none of the cache's files, never a tree with holes in it."""
    service.start_worker()
    name = uuid.uuid4().hex
    assert service.wait(service.submit(TWO_FILES, variables={"RUN_NAME": name})) == "succeeded"
    kept, gone = stored(f"kept {name}\n".encode()), stored(f"gone {name}\n".encode())
    assert kept.is_file() and gone.is_file()
    gone.unlink()
    run_id = service.submit(NONE_OF_THEM)
    assert service.wait(run_id) == "succeeded", Path(service.jobs(run_id)["use"].log_path or "").read_text()
