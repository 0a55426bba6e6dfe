"""Run and job ids: version 7 UUIDs, ordered by time, random after it."""

from __future__ import annotations

import uuid

import pytest

from pipelines.identifiers import is_job_id, is_run_id
from pipelines.store.ids import new_id, time_ordered_id


@pytest.mark.parametrize(("unix_ms", "random", "expected"), [
    (0, bytes(10), "00000000-0000-7000-8000-000000000000"),
    (0xFFFF_FFFF_FFFF, b"\xff" * 10, "ffffffff-ffff-7fff-bfff-ffffffffffff"),
    (0x0123456789AB, bytes(range(10)), "01234567-89ab-7000-8203-040506070809"),
])
def test_time_ordered_id_lays_out_time_version_and_variant(unix_ms: int, random: bytes, expected: str) -> None:
    """48 bits of milliseconds, the version nibble 7, the RFC variant, then the random bits."""
    assert time_ordered_id(unix_ms, random) == expected
    parsed = uuid.UUID(expected)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122


def test_ids_of_later_milliseconds_sort_after_earlier_ones() -> None:
    """Whatever the random part, a later millisecond gives a greater id (as text too)."""
    assert time_ordered_id(1000, b"\xff" * 10) < time_ordered_id(1001, bytes(10))


def test_new_ids_are_unique_and_pass_the_id_grammar() -> None:
    """Ids made in one millisecond still differ, and every one is a valid run and job id."""
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(is_job_id(i) and is_run_id(i) for i in ids)


def test_time_ordered_id_takes_exactly_ten_random_bytes() -> None:
    """A short random part is refused rather than padded."""
    with pytest.raises(ValueError, match="10 random bytes"):
        time_ordered_id(0, bytes(9))
