"""JobLog and OutputDelivery without a container: records coalesce reads, the limit counts stored
bytes, the live reader gets exactly what is stored, and a slow, stalled or vanished reader never
blocks the writer."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from worker.sandbox.delivery import OutputDelivery
from worker.sandbox.logs import JobLog, read_log

NOTE_BYTES = 256

# (what the job wrote per write(2), how many writes)
WRITES = [
    (b"x", 100_000),
    (b"\x01", 50_000),  # 6 bytes of JSON each
    (b"\\\"", 50_000),  # escaped quote and backslash
    ("\u20ac".encode(), 30_000),  # a 3-byte character
    (b"\xff", 30_000),  # not UTF-8
    (b"line of text\n", 10_000),
]


def collect() -> tuple[list[tuple[str, bytes]], object]:
    got: list[tuple[str, bytes]] = []
    return got, lambda stream, data: got.append((stream, data))


@pytest.mark.parametrize(("chunk", "count"), WRITES)
def test_file_never_outgrows_the_limit(tmp_path: Path, chunk: bytes, count: int) -> None:
    limit = 16 * 1024
    got, sink = collect()
    log = JobLog(tmp_path / "log.jsonl", limit, sink)  # type: ignore[arg-type]
    for _ in range(count):
        log.write("out", chunk)
        if log.over_limit:
            break
    log.close()
    assert log.over_limit
    size = os.path.getsize(tmp_path / "log.jsonl")
    assert limit - 64 < size <= limit + NOTE_BYTES, size
    records = read_log(tmp_path / "log.jsonl")
    assert records[-1][1] == "sys" and "log limit" in records[-1][2]
    # reads arriving together are one record, not one per write
    assert len(records) <= 3
    # the live reader got what the file stores, byte for byte
    shown = b"".join(d for s, d in got if s == "out")
    stored = "".join(text for _t, s, text in records if s == "out")
    assert shown.decode("utf-8", "backslashreplace") == stored


def test_characters_split_across_reads_stay_whole(tmp_path: Path) -> None:
    log = JobLog(tmp_path / "log.jsonl", 1 << 20)
    data = "caf\u00e9 \u20ac \U0001f600\n".encode()
    for i in range(len(data)):
        log.write("out", data[i:i + 1])
    log.write("err", b"\xe2\x82")  # cut short by the end of the output
    log.close()
    records = read_log(tmp_path / "log.jsonl")
    assert [(s, text) for _t, s, text in records] == [("out", data.decode()), ("err", "\\xe2\\x82")]


def test_streams_and_time_split_records(tmp_path: Path) -> None:
    log = JobLog(tmp_path / "log.jsonl", 1 << 20)
    log.write("out", b"one\n")
    log.write("err", b"two\n")
    log.write("out", b"three\n")
    log.write("out", b"four\n")
    time.sleep(0.06)
    log.tick()
    log.write("out", b"later\n")
    log.close()
    assert [(s, text) for _t, s, text in read_log(tmp_path / "log.jsonl")] == [
        ("out", "one\n"), ("err", "two\n"), ("out", "three\nfour\n"), ("out", "later\n")]


def test_a_stalled_reader_is_given_up_without_blocking_the_writer(tmp_path: Path) -> None:
    """The writer's calls return at once while the reader is stuck; the queue reports backlog
    past its bound; finish() gives up after the stall time and says how much was not delivered."""
    release = threading.Event()

    def stuck(_stream: str, _data: bytes) -> None:
        release.wait(30)

    delivery = OutputDelivery(stuck, high_water=64 * 1024, stall_s=0.3)
    try:
        t0 = time.monotonic()
        for _ in range(100):
            delivery.put("out", b"x" * 4096)
        assert time.monotonic() - t0 < 5  # never waited for the reader
        assert delivery.backlogged()
        lost = delivery.finish()
        assert lost >= 100 * 4096 - 256 * 1024  # all but what the stuck call holds
    finally:
        release.set()
        delivery.close()


def test_backlog_clears_and_wakes_when_the_reader_catches_up() -> None:
    slow = threading.Event()
    got: list[bytes] = []

    def reader(_stream: str, data: bytes) -> None:
        slow.wait(30)
        got.append(data)

    delivery = OutputDelivery(reader, high_water=16 * 1024)
    try:
        for _ in range(20):
            delivery.put("out", b"y" * 4096)
        assert delivery.backlogged()
        slow.set()
        import select

        assert select.select([delivery.wake_fd], [], [], 10)[0]
        assert not delivery.backlogged()
        assert delivery.finish() == 0
        assert b"".join(got) == b"y" * 4096 * 20
    finally:
        delivery.close()


def test_a_slow_reader_that_keeps_reading_gets_everything() -> None:
    """Slower than the stall time in total, but never idle that long: nothing is given up."""
    got: list[bytes] = []

    def slow(_stream: str, data: bytes) -> None:
        time.sleep(0.05)
        got.append(data)

    delivery = OutputDelivery(slow, stall_s=0.3)
    try:
        delivery.put("out", b"z" * (16 * 1024 * 20))  # 20 slices, about 1 s
        assert delivery.finish() == 0
        assert b"".join(got) == b"z" * (16 * 1024 * 20)
    finally:
        delivery.close()


def test_a_reader_that_went_away_breaks_only_its_stream() -> None:
    got: list[tuple[str, bytes]] = []

    def reader(stream: str, data: bytes) -> None:
        if stream == "out":
            raise BrokenPipeError
        got.append((stream, data))

    delivery = OutputDelivery(reader)
    try:
        delivery.put("out", b"lost")
        deadline = time.monotonic() + 10
        while "out" not in delivery.broken and time.monotonic() < deadline:
            time.sleep(0.01)
        assert delivery.broken == {"out"}
        delivery.put("out", b"also lost")
        delivery.put("err", b"kept")
        assert delivery.finish() == len(b"lost") + len(b"also lost")
        assert got == [("err", b"kept")]
    finally:
        delivery.close()
