"""Workers as they announce themselves: registration, heartbeat, the list an operator reads (adapter).

A worker writes its row when it starts (:func:`register_worker`: host, capacity, runtimes, the
images in its store, version, how its files reach the API) and beats every ``heartbeat_s``
(:func:`beat`: one ``UPDATE`` of ``last_seen_at``, plus the image list when it changed). The
row is information for people and for a future scheduler, never a source of truth about jobs:
a worker that vanishes is noticed by its leases expiring (``transitions.expire_leases``), which
settles or retries its jobs whether or not the row is still there. :func:`list_workers` judges a
row ``gone`` once it missed :data:`GONE_AFTER_BEATS` of its own heartbeats (each worker's
interval is on its row, so a slow-beating worker is not called gone by a fast one's rule), and
``stopped`` when it said goodbye (:func:`stop_worker`).

The statements are built once here, like :mod:`pipelines.store.statements`' (this table is
written by the worker's heartbeat thread only; nothing else of the store touches it).

>>> presence_state(last_seen_age_s=25.0, heartbeat_s=10.0, stopped=False)
'alive'
>>> presence_state(last_seen_age_s=31.0, heartbeat_s=10.0, stopped=False)
'gone'
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from pipelines.store.db import reader
from pipelines.store.models import Job, UTCDateTime, WorkerPresence

#: a worker that missed this many of its heartbeats is shown ``gone`` (its leases decide its jobs)
GONE_AFTER_BEATS = 3
#: rows of workers gone (or stopped) this long are dropped when another worker registers
FORGET_AFTER_S = 7 * 86400.0

WORKERS: Any = WorkerPresence.__table__  # type: ignore[attr-defined]
_JOBS: Any = Job.__table__  # type: ignore[attr-defined]


def _at(name: str) -> Any:
    return sa.bindparam(name, type_=UTCDateTime())


_FIELDS = ("host", "version", "memory_bytes", "cpus", "concurrency", "runtimes", "images", "transport",
           "heartbeat_s", "started_at")
REREGISTER = (
    WORKERS.update().where(WORKERS.c.id == sa.bindparam("p_id"))
    .values({**{f: sa.bindparam(f"p_{f}", type_=WORKERS.c[f].type) for f in _FIELDS},
             "last_seen_at": _at("p_now"), "stopped_at": None})
)
REGISTER = WORKERS.insert().values(
    {"id": sa.bindparam("p_id"), **{f: sa.bindparam(f"p_{f}", type_=WORKERS.c[f].type) for f in _FIELDS},
     "last_seen_at": _at("p_now"), "stopped_at": None})
FORGET_OLD = WORKERS.delete().where(WORKERS.c.last_seen_at < _at("p_before"))
BEAT = (WORKERS.update().where(WORKERS.c.id == sa.bindparam("p_id"), WORKERS.c.stopped_at.is_(None))
        .values(last_seen_at=_at("p_now")))
BEAT_WITH_IMAGES = (WORKERS.update().where(WORKERS.c.id == sa.bindparam("p_id"), WORKERS.c.stopped_at.is_(None))
                    .values(last_seen_at=_at("p_now"), images=sa.bindparam("p_images", type_=WORKERS.c.images.type)))
STOP = WORKERS.update().where(WORKERS.c.id == sa.bindparam("p_id")).values(stopped_at=_at("p_now"))
LIST = sa.select(WORKERS).order_by(WORKERS.c.host, WORKERS.c.started_at)
RUNNING_BY_OWNER = (
    sa.select(_JOBS.c.lease_owner, sa.func.count())
    .where(_JOBS.c.status == "running", _JOBS.c.lease_owner.is_not(None))
    .group_by(_JOBS.c.lease_owner)
)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a worker says about itself when it starts."""

    id: str
    host: str
    version: str
    memory_bytes: int
    cpus: float
    concurrency: int
    runtimes: tuple[str, ...]
    images: tuple[tuple[str, str], ...]  # (name, digest)
    transport: str
    heartbeat_s: float
    started_at: dt.datetime


@dataclass(frozen=True, slots=True)
class WorkerSeen:
    """A worker as the list shows it: its announcement, when it last beat, and what it runs now."""

    info: WorkerInfo
    last_seen_at: dt.datetime
    last_seen_age_s: float
    state: str  # alive | gone | stopped
    running_jobs: int


def presence_state(*, last_seen_age_s: float, heartbeat_s: float, stopped: bool) -> str:
    """``stopped`` (it said goodbye), ``gone`` (it missed GONE_AFTER_BEATS beats) or ``alive``."""
    if stopped:
        return "stopped"
    return "gone" if last_seen_age_s > GONE_AFTER_BEATS * max(heartbeat_s, 0.1) else "alive"


def _params(info: WorkerInfo, now: dt.datetime) -> dict[str, Any]:
    return {"p_id": info.id, "p_host": info.host, "p_version": info.version, "p_memory_bytes": info.memory_bytes,
            "p_cpus": info.cpus, "p_concurrency": info.concurrency, "p_runtimes": list(info.runtimes),
            "p_images": _images(info.images), "p_transport": info.transport, "p_heartbeat_s": info.heartbeat_s,
            "p_started_at": info.started_at, "p_now": now}


def _images(images: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"name": name, "digest": digest} for name, digest in images]


def register_worker(session: Session, info: WorkerInfo, now: dt.datetime) -> None:
    """Write (or rewrite: a worker id is one process, but a restarted container may reuse its
    host name and pid) the worker's row; drops rows last seen more than FORGET_AFTER_S ago."""
    connection = session.connection()
    params = _params(info, now)
    if connection.execute(REREGISTER, params).rowcount == 0:
        connection.execute(REGISTER, params)
    connection.execute(FORGET_OLD, {"p_before": now - dt.timedelta(seconds=FORGET_AFTER_S)})


def beat(session: Session, worker_id: str, now: dt.datetime,
         images: Sequence[tuple[str, str]] | None = None) -> bool:
    """The worker is alive at ``now`` (and, when given, has these images); False when its row is
    missing or marked stopped: the caller registers again."""
    connection = session.connection()
    if images is None:
        result = connection.execute(BEAT, {"p_id": worker_id, "p_now": now})
    else:
        result = connection.execute(BEAT_WITH_IMAGES, {"p_id": worker_id, "p_now": now, "p_images": _images(images)})
    return bool(result.rowcount == 1)


def stop_worker(session: Session, worker_id: str, now: dt.datetime) -> None:
    """The worker is stopping cleanly (shown ``stopped``, not ``gone``)."""
    session.connection().execute(STOP, {"p_id": worker_id, "p_now": now})


def list_workers(engine: sa.Engine, now: dt.datetime) -> list[WorkerSeen]:
    """Every known worker, by host, with its state and the jobs it holds leases on (read-only)."""
    with reader(engine).connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(LIST)]
        running = {str(row[0]): int(row[1] or 0) for row in connection.execute(RUNNING_BY_OWNER)}
    seen = []
    for row in rows:
        age = max(0.0, (now - row["last_seen_at"]).total_seconds())
        info = WorkerInfo(
            id=row["id"], host=row["host"], version=row["version"], memory_bytes=int(row["memory_bytes"]),
            cpus=float(row["cpus"]), concurrency=int(row["concurrency"]),
            runtimes=tuple(str(r) for r in row["runtimes"] or ()),
            images=tuple((str(i.get("name", "")), str(i.get("digest", ""))) for i in row["images"] or ()
                         if isinstance(i, dict)),
            transport=row["transport"], heartbeat_s=float(row["heartbeat_s"]), started_at=row["started_at"])
        state = presence_state(last_seen_age_s=age, heartbeat_s=info.heartbeat_s, stopped=row["stopped_at"] is not None)
        seen.append(WorkerSeen(info, row["last_seen_at"], round(age, 3), state, running.get(info.id, 0)))
    return seen
