"""``sandpit workers [--json]``: the workers of a running service, as ``GET /api/v1/workers`` lists them.

A client like ``sandpit submit`` (SANDPIT_API_URL, SANDPIT_TOKEN; a trusted token). One line per
worker: its state (``alive``, ``gone`` past three missed heartbeats, ``stopped``), how long ago it
last beat, its host, jobs running over its concurrency, memory and CPUs, runtimes, images, version
and how its files reach the API. Host and image names come from the workers, so they are shown
through the terminal quoting (a worker's host name cannot write escape sequences to the screen).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from worker.settings import Settings


def add_workers_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    workers = sub.add_parser("workers", parents=[common], help="list the workers of a running service",
                             description="List the workers that announced themselves, with the age of their "
                                         "last heartbeat (environment: SANDPIT_API_URL, SANDPIT_TOKEN: a "
                                         "trusted token).")
    workers.add_argument("--json", action="store_true", help="print the API's answer as it is (default: off)")


def age(seconds: float) -> str:
    """A short age: ``0.4s``, ``12s``, ``5m``, ``3h``, ``2d``.

    >>> [age(s) for s in (0.42, 12.3, 300, 3 * 3600 + 5, 2 * 86400)]
    ['0.4s', '12s', '5m', '3h', '2d']
    """
    if seconds < 10:
        return f"{seconds:.1f}s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def worker_line(worker: dict[str, Any]) -> str:
    """One worker as a line of the table, escaped as one line (a host name cannot break it or
    write control sequences to the screen)."""
    from worker.terminal import quote_for_terminal

    gib = worker["memory_bytes"] / 1024**3
    images = ",".join(i["name"] for i in worker["images"]) or "-"
    text = (f"{worker['state']:<7} {age(worker['last_seen_age_s']):>5}  {worker['host']:<20} "
            f"{worker['running_jobs']}/{worker['concurrency']:<3} {gib:5.1f}G {worker['cpus']:>4g}cpu  "
            f"{','.join(worker['runtimes']) or '-':<16} {worker['transport']:<5} {worker['version']:<8} {images}  "
            f"{worker['id']}")
    return quote_for_terminal(text, quotes=False)


def workers_command(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.remote import Client

    answer = Client(settings).call("GET", "/api/v1/workers")
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    print(f"{'STATE':<7} {'SEEN':>5}  {'HOST':<20} {'JOBS':<5} {'MEMORY':>6} {'CPUS':>7}  {'RUNTIMES':<16} "
          f"{'FILES':<5} {'VERSION':<8} IMAGES  ID")
    for worker in answer["workers"]:
        print(worker_line(worker))
    gone = sum(1 for w in answer["workers"] if w["state"] == "gone")
    if gone:
        print(f"{gone} gone: no heartbeat for {answer['gone_after_heartbeats']} of their intervals; "
              "their running jobs are retried or failed when their leases expire")
    return 0
