"""The worker's ``Budget``: memory and CPU it hands out; a job waits until it fits, never over-commits."""

from __future__ import annotations

import threading

import pytest

from worker.service.context import Budget

GiB = 1024**3


@pytest.mark.parametrize(("taken", "asked", "granted"), [
    ((), (1 * GiB, 1.0), (1 * GiB, 1.0)),
    ((), (64 * GiB, 16.0), (8 * GiB, 4.0)),  # bigger than the whole budget: clamped, so it runs alone
    (((4 * GiB, 1.0),), (4 * GiB, 3.0), (4 * GiB, 3.0)),  # exactly what is left
    (((1 * GiB, 1.3),), (1 * GiB, 2.7), (1 * GiB, 2.7)),  # float CPUs: 1.3 + 2.7 fits within rounding
])
def test_what_fits_is_granted_at_once(taken: tuple[tuple[int, float], ...], asked: tuple[int, float],
                                      granted: tuple[int, float]) -> None:
    """A job that fits in what is free is granted without waiting (clamped to the whole budget)."""
    budget = Budget(8 * GiB, 4.0)
    for memory, cpus in taken:
        budget.take(memory, cpus)
    done: list[tuple[int, float]] = []
    taker = threading.Thread(target=lambda: done.append(budget.take(*asked)))
    taker.start()
    taker.join(2)
    assert done == [granted]


@pytest.mark.parametrize(("first", "second"), [
    ((6 * GiB, 1.0), (4 * GiB, 1.0)),  # memory does not fit
    ((1 * GiB, 3.5), (1 * GiB, 1.0)),  # cpus do not fit
])
def test_a_job_that_does_not_fit_waits_for_a_give(first: tuple[int, float], second: tuple[int, float]) -> None:
    """The second job blocks until the first gives its share back, then gets it."""
    budget = Budget(8 * GiB, 4.0)
    held = budget.take(*first)
    granted = threading.Event()
    waiter = threading.Thread(target=lambda: (budget.take(*second), granted.set()))
    waiter.start()
    assert not granted.wait(0.3)
    budget.give(*held)
    assert granted.wait(2)
    waiter.join(2)
    assert (budget.free_memory, budget.free_cpus) == (8 * GiB - second[0], pytest.approx(4.0 - second[1]))


def test_giving_everything_back_restores_the_whole_budget() -> None:
    budget = Budget(8 * GiB, 4.0)
    shares = [budget.take(2 * GiB, 1.0) for _ in range(4)]
    assert (budget.free_memory, budget.free_cpus) == (0, 0.0)
    for share in shares:
        budget.give(*share)
    assert (budget.free_memory, budget.free_cpus) == (8 * GiB, 4.0)
