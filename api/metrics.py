"""Prometheus text exposition of the store's counters (counted by the store, rendered pure).

>>> print(render(Counts({"running": 1}, {"queued": 2}, 2, None)), end="")
# HELP sandpit_runs Runs by status.
# TYPE sandpit_runs gauge
sandpit_runs{status="running"} 1
# HELP sandpit_jobs Jobs by status.
# TYPE sandpit_jobs gauge
sandpit_jobs{status="queued"} 2
# HELP sandpit_outbox_pending Queued jobs not yet handed to the broker.
# TYPE sandpit_outbox_pending gauge
sandpit_outbox_pending 2
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session

from pipelines.store.reads import status_counts

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Counts:
    runs: dict[str, int]
    jobs: dict[str, int]
    outbox_pending: int
    broker_queue: int | None  # messages waiting in the broker's queue; None: Redis unreachable


def count_rows(session: Session) -> tuple[dict[str, int], dict[str, int], int]:
    counted = status_counts(session)
    return counted.runs, counted.jobs, counted.outbox_pending


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(counts: Counts) -> str:
    lines: list[str] = []

    def family(name: str, help_text: str, samples: list[tuple[str, int]]) -> None:
        lines.extend((f"# HELP {name} {help_text}", f"# TYPE {name} gauge"))
        lines.extend(f"{name}{labels} {value}" for labels, value in samples)

    family("sandpit_runs", "Runs by status.",
           [(f'{{status="{_escape(s)}"}}', n) for s, n in sorted(counts.runs.items())])
    family("sandpit_jobs", "Jobs by status.",
           [(f'{{status="{_escape(s)}"}}', n) for s, n in sorted(counts.jobs.items())])
    family("sandpit_outbox_pending", "Queued jobs not yet handed to the broker.", [("", counts.outbox_pending)])
    if counts.broker_queue is not None:
        family("sandpit_broker_queue_length", "Messages waiting in the broker queue.", [("", counts.broker_queue)])
    return "\n".join(lines) + "\n"
