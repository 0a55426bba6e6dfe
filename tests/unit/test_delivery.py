"""What a delivery of the http transport carries and in which requests (pure parts, no services)."""

from __future__ import annotations

import pytest

from worker.remote_files import Piece, plan_requests
from worker.upload_outbox import Delivery, LogCopy

FULL = Delivery(job_id="j1", run_id="r1", attempt=2, token="spj_x", worker_id="host-1", blobs=("a" * 64,),
                log_file="/s/logs/e0d3.jsonl", log_sha256="b" * 64, record={"status": "succeeded"},
                service_logs=((0, LogCopy("j1.svc0.jsonl", "/s/logs/e0d3.svc0.jsonl", "c" * 64)),),
                caches=(("deps-v1", "d" * 64, 1234),))


def test_an_outbox_entry_reads_back_as_the_delivery_it_was() -> None:
    """Everything a restarted worker needs survives the JSON: services' logs and caches' keys too."""
    assert Delivery.from_json(FULL.to_json()) == FULL


def test_an_entry_written_before_services_and_caches_travelled_still_reads() -> None:
    """An outbox entry without the newer keys is a delivery with no service logs and no caches."""
    old = {k: v for k, v in FULL.to_json().items() if k not in ("service_logs", "caches")}
    read = Delivery.from_json(old)
    assert (read.service_logs, read.caches, read.blobs) == ((), (), FULL.blobs)


def _shape(plan: list[Piece | list[Piece]]) -> list[object]:
    return [[p.sha256 for p in r] if isinstance(r, list) else r.sha256 for r in plan]


@pytest.mark.parametrize(("pieces", "expected"), [
    # a typical job: every file and the log in one bundle, the log last
    ([Piece("log", "L", 3, "p"), Piece("file", "a", 5, "p"), Piece("service", "s", 4, "p", 0)], [["a", "s", "L"]]),
    # a file over the small limit alone, first; a log over the bundle limit alone, last
    ([Piece("file", "big", 11, "p"), Piece("log", "L", 25, "p"), Piece("file", "a", 5, "p")], ["big", ["a"], "L"]),
    # a service's log over the bundle limit alone, before the bundles
    ([Piece("service", "s", 30, "p", 1), Piece("log", "L", 2, "p")], ["s", ["L"]]),
    # bundles cut at the limit, the log in the last one
    ([Piece("file", c, 8, "p") for c in "abc"] + [Piece("log", "L", 8, "p")], [["a", "b"], ["c", "L"]]),
    # nothing to send: no request
    ([], []),
])
def test_the_requests_a_delivery_takes(pieces: list[Piece], expected: list[object]) -> None:
    """Small files and logs share bundles of at most the bundle size; big ones go alone; the job's
    log is the last thing sent."""
    assert _shape(plan_requests(pieces, small=10, bundle=20)) == expected
