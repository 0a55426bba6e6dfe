"""The back-off of `sandpit up`'s supervised children (pure)."""

from __future__ import annotations

import pytest

from worker.service.children import FIRST_DELAY_S, MAX_DELAY_S, STABLE_AFTER_S, next_delay


@pytest.mark.parametrize(("previous", "uptime", "expected"), [
    (None, 0.0, FIRST_DELAY_S),                 # first death: a second
    (1.0, 0.5, 2.0),                            # dies again at once: doubles
    (8.0, 10.0, 16.0),
    (16.0, 1.0, MAX_DELAY_S),                   # capped
    (MAX_DELAY_S, 1.0, MAX_DELAY_S),
    (MAX_DELAY_S, STABLE_AFTER_S, FIRST_DELAY_S),  # ran a minute: recovered, start over
])
def test_next_delay(previous: float | None, uptime: float, expected: float) -> None:
    """A child that keeps dying backs off exponentially to a cap; one that stayed up starts over."""
    assert next_delay(previous, uptime) == expected
