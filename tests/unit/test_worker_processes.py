"""A worker of several processes (worker/service/processes.py): its children's commands, shares
and slot numbers, without starting anything."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from worker.errors import ConfigError
from worker.executor import ConcurrentSlots
from worker.service.context import host_budget
from worker.service.processes import ID_BASE_ENV, SHARE_ENV, children_of, parse_share, split


def test_children_get_their_slots_share_and_first_id() -> None:
    kids = children_of(["sandpit", "worker"], 5, 2, {"KEEP": "1"})
    assert [k.argv for k in kids] == [["sandpit", "worker", "--concurrency", "3"],
                                      ["sandpit", "worker", "--concurrency", "2"]]
    assert [(k.env[SHARE_ENV], k.env[ID_BASE_ENV], k.env["KEEP"]) for k in kids] == [("0/2", "0", "1"),
                                                                                      ("1/2", "3", "1")]


@pytest.mark.parametrize(("concurrency", "processes"), [(1, 2), (3, 0), (2, -1)])
def test_impossible_splits_are_refused(concurrency: int, processes: int) -> None:
    with pytest.raises(ConfigError, match="--processes"):
        split(concurrency, processes)


@pytest.mark.parametrize("text", ["x", "1/1", "-1/2", "1/", "/2", "1/2/3"])
def test_a_malformed_share_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=SHARE_ENV):
        parse_share(text)


def test_a_part_of_the_budget_is_that_part_of_the_host() -> None:
    whole, half = host_budget(), host_budget(2)
    assert half.memory_bytes == whole.memory_bytes // 2 and half.cpus == whole.cpus / 2


def test_slots_are_numbered_from_the_process_base() -> None:
    slots = ConcurrentSlots(3)
    a, b = slots.take(), slots.take()
    slots.give(a)
    assert (a, b, slots.take(), slots.take()) == (3, 4, 3, 5)


@pytest.mark.parametrize("command", ["worker", "up"])
def test_the_commands_refuse_an_impossible_split_before_starting_anything(command: str) -> None:
    """``sandpit worker``/``up --processes 3 --concurrency 2``: exit 2 with the reason, nothing started
    (``up`` would otherwise restart a worker that cannot start, with back-off, for ever)."""
    argv = [sys.executable, "-m", "worker", command, "--processes", "3", "--concurrency", "2"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SANDPIT_STATE_DIR": "/nonexistent/sandpit"})
    assert done.returncode == 2
    assert done.stderr == "sandpit: --processes 3 needs at least 3 job slots (--concurrency 2)\n"
