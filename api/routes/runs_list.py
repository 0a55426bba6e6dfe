"""``GET /api/v1/runs`` and ``GET /api/v1/repos/{id}/runs``: runs newest first, filtered, in keyed pages.

A page's ``next`` is an opaque cursor (the last run's creation time and id, base64url): pass it
back as ``?before=`` for the next page. The web UI's run list reads the same store function
(:func:`pipelines.store.listing.list_runs`) with the same parsed filter (:func:`run_filter`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.deps import CallerDep, SessionDep
from api.errors import BadRequest
from api.routes import answer_head
from pipelines.store import repos as repo_store
from pipelines.store.listing import MAX_PAGE, RUN_SOURCES, RUN_STATUSES, RunFilter, RunSummary, list_runs

router = APIRouter(tags=["runs"])


class RunSummaryPublic(BaseModel):
    id: str
    status: str
    cancelled: bool
    trust: str
    source: str
    ref: str
    sha: str
    title: str = Field(description="the commit message's first line")
    trigger: str = Field(description="what started the run: a web-hook's event, a token's name, `local`")
    repository_id: str | None
    repository: str | None
    jobs_total: int
    jobs_failed: int
    created_at: dt.datetime
    finished_at: dt.datetime | None
    duration_s: float | None = Field(description="creation to end; None while it runs")


class RunList(BaseModel):
    runs: list[RunSummaryPublic]
    next: str | None = Field(description="pass as `?before=` for the next page; None on the last page")


def summary_public(run: RunSummary) -> RunSummaryPublic:
    duration = run.duration_s(run.finished_at) if run.finished_at is not None else None
    return RunSummaryPublic(
        id=run.id, status=run.status, cancelled=run.cancelled, trust=run.trust, source=run.source, ref=run.ref,
        sha=run.sha, title=run.title, trigger=run.trigger, repository_id=run.repository_id,
        repository=run.repository, jobs_total=run.jobs_total, jobs_failed=run.jobs_failed,
        created_at=run.created_at, finished_at=run.finished_at, duration_s=duration)


def encode_cursor(cursor: tuple[dt.datetime, str]) -> str:
    """An opaque page cursor.

    >>> encode_cursor((dt.datetime(2024, 1, 2, tzinfo=dt.UTC), "r1"))
    'WyIyMDI0LTAxLTAyVDAwOjAwOjAwKzAwOjAwIiwgInIxIl0'
    """
    text = json.dumps([cursor[0].isoformat(), cursor[1]])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[dt.datetime, str]:
    """The cursor :func:`encode_cursor` made; :class:`BadRequest` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        at, run_id = json.loads(raw)
        when = dt.datetime.fromisoformat(at)
        if not isinstance(run_id, str) or when.tzinfo is None or len(run_id) > 36:
            raise ValueError
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        raise BadRequest(f"?before={text[:80]!r} is not a cursor this API gave out (use a page's `next`)") from None
    return when, run_id


def _words(values: list[str] | None, allowed: tuple[str, ...], name: str) -> tuple[str, ...]:
    words = tuple(w.strip() for v in values or () for w in v.split(",") if w.strip())
    unknown = [w for w in words if w not in allowed]
    if unknown:
        raise BadRequest(f"?{name}={unknown[0][:40]!r} is not one of {', '.join(allowed)}")
    return words


def _since(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"?created_since={text[:40]!r} is not an ISO 8601 time (2024-05-01 or "
                         "2024-05-01T12:00:00+00:00)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def run_filter(*, repository: str | None = None, ref: str | None = None, status: list[str] | None = None,
               source: list[str] | None = None, created_since: str | None = None, before: str | None = None,
               limit: int = 50) -> RunFilter:
    """The filter a query string asks for (comma lists or repeated parameters for ``status`` and
    ``source``; times without a zone are UTC); :class:`BadRequest` naming the first bad value."""
    return RunFilter(repository=repository or None, ref=ref or None, statuses=_words(status, RUN_STATUSES, "status"),
                     sources=_words(source, RUN_SOURCES, "source"), created_since=_since(created_since),
                     before=decode_cursor(before) if before else None, limit=limit)


Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="runs per page")]
Statuses = Annotated[list[str] | None, Query(description=f"any of {', '.join(RUN_STATUSES)} (comma list or repeated)")]
Sources = Annotated[list[str] | None, Query(description=f"any of {', '.join(RUN_SOURCES)}")]
Since = Annotated[str | None, Query(description="ISO 8601 time: runs created at or after it")]
Before = Annotated[str | None, Query(description="a page's `next` cursor")]


@router.get("/runs", response_model=RunList, responses={400: {"description": "a filter value or cursor is bad"}})
def list_all_runs(
    _caller: CallerDep, session: SessionDep, repository: str | None = None, ref: str | None = None,
    status: Statuses = None, source: Sources = None, created_since: Since = None, before: Before = None,
    limit: Limit = 50,
) -> RunList:
    wanted = run_filter(repository=repository, ref=ref, status=status, source=source, created_since=created_since,
                        before=before, limit=limit)
    page = list_runs(session, wanted)
    return RunList(runs=[summary_public(r) for r in page.runs],
                   next=encode_cursor(page.next_before) if page.next_before else None)


@router.get("/repos/{repo_id}/runs", response_model=RunList,
            responses={404: {"description": "`unknown_repository`"}})
def list_repository_runs(
    repo_id: str, _caller: CallerDep, session: SessionDep, ref: str | None = None, status: Statuses = None,
    created_since: Since = None, before: Before = None, limit: Limit = 50,
) -> RunList:
    repo = repo_store.get_repository(session, repo_id)
    wanted = run_filter(repository=repo.id, ref=ref, status=status, created_since=created_since, before=before,
                        limit=limit)
    page = list_runs(session, wanted)
    return RunList(runs=[summary_public(r) for r in page.runs],
                   next=encode_cursor(page.next_before) if page.next_before else None)


answer_head(router)
