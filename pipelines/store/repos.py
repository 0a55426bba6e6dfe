"""Forge repositories, their web-hook deliveries and the runs they created (adapter).

::

    StoreError (pipelines.store.errors)
    ├── RepositoryNotFound     no repository has that id or name
    └── RepositoryExists       a repository of that name is registered already

Secrets arrive sealed (see :mod:`pipelines.forges.sealing`); nothing here sees them in clear.

An authenticated delivery is *claimed* before anything is acted on (:func:`claim_delivery`,
its own short transaction): the unique ``(repo_id, delivery_id)`` and ``(repo_id, body_sha256)``
make a second copy of the same delivery (a redelivery, a captured body resent under a new id,
two copies arriving at the same moment) find the first one's row instead of acting again; the
claim's row is then given its verdict (:func:`settle_delivery`). Deliveries refused before they
were authenticated are recorded with neither (:func:`record_delivery`): a forged delivery
cannot reserve an id or a body a real one will use.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from pipelines.store.errors import StoreError
from pipelines.store.ids import new_id
from pipelines.store.models import Repository, WebhookDelivery
from pipelines.store.statements import (
    DELETE_DELIVERIES_OF,
    DELETE_DELIVERY,
    DELETE_REPOSITORY,
    DELETE_RUN_LINKS_OF,
    INSERT_DELIVERY,
    INSERT_REPOSITORY,
    INSERT_RUN_LINK,
    LATEST_DELIVERIES,
    PROCESSING,
    REPOSITORIES,
    REPOSITORIES_BY_NAME,
    REPOSITORY_BY_ID,
    REPOSITORY_BY_NAME,
    SEEN_BY_BODY,
    SEEN_BY_ID,
    SET_REPOSITORY_SECRET,
    SETTLE_DELIVERY,
    TAKE_OVER,
    UNFINISHED_MERGE_REQUEST_RUNS,
)

# a claim still "processing" after this was abandoned by a process that died mid-way (handling
# takes seconds: one shallow fetch, bounded by the mirror's timeouts, and one transaction)
ABANDONED_AFTER = dt.timedelta(minutes=10)


class RepositoryNotFound(StoreError):
    def __init__(self, ref: str) -> None:
        super().__init__(f"no repository with id or name {ref!r}")
        self.ref = ref


class RepositoryExists(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"a repository named {name!r} is registered already (remove it first, or pick a name)")
        self.name = name


@dataclass(frozen=True, slots=True)
class NewRepository:
    name: str
    forge: str
    clone_url: str
    secret_sealed: str
    token_sealed: str | None = None
    pipeline_path: str = ".gitlab-ci.yml"
    default_branch: str = "main"
    fork_policy: str = "approve"
    api_url: str | None = None  # the forge's API for statuses; None: derived from clone_url


def add_repository(
    session: Session, new: NewRepository, now: dt.datetime, new_id: Callable[[], str] = new_id
) -> Repository:
    """Register ``new`` (:class:`RepositoryExists` if its name is taken)."""
    connection = session.connection()
    if connection.execute(REPOSITORY_BY_NAME, {"p_ref": new.name}).first() is not None:
        raise RepositoryExists(new.name)
    repo = Repository(id=new_id(), name=new.name, forge=new.forge, clone_url=new.clone_url,
                      secret_sealed=new.secret_sealed, token_sealed=new.token_sealed,
                      pipeline_path=new.pipeline_path, default_branch=new.default_branch,
                      fork_policy=new.fork_policy, created_at=now, api_url=new.api_url)
    try:
        with connection.begin_nested():
            connection.execute(INSERT_REPOSITORY, [{c.name: getattr(repo, c.name) for c in REPOSITORIES.columns}])
    except IntegrityError:  # a concurrent add of the same name won
        raise RepositoryExists(new.name) from None
    return repo


def list_repositories(session: Session) -> list[Repository]:
    return [Repository(**row._mapping) for row in session.connection().execute(REPOSITORIES_BY_NAME)]


def get_repository(session: Session, ref: str) -> Repository:
    """The repository whose id or name is ``ref`` (a snapshot)."""
    connection = session.connection()
    row = connection.execute(REPOSITORY_BY_ID, {"p_ref": ref}).first()
    if row is None:
        row = connection.execute(REPOSITORY_BY_NAME, {"p_ref": ref}).first()
    if row is None:
        raise RepositoryNotFound(ref)
    return Repository(**row._mapping)


def remove_repository(session: Session, ref: str) -> str:
    """Forget the repository (its deliveries and run links go with it; its runs stay); its id."""
    repo_id = get_repository(session, ref).id
    connection = session.connection()
    for statement in (DELETE_DELIVERIES_OF, DELETE_RUN_LINKS_OF, DELETE_REPOSITORY):
        connection.execute(statement, {"p_id": repo_id})
    return repo_id


def set_repository_secret(session: Session, ref: str, secret_sealed: str, now: dt.datetime) -> Repository:
    repo = get_repository(session, ref)
    session.connection().execute(SET_REPOSITORY_SECRET, {"p_id": repo.id, "p_secret": secret_sealed, "p_now": now})
    repo.secret_sealed = secret_sealed
    repo.secret_rotated_at = now
    return repo


@dataclass(frozen=True, slots=True)
class SeenDelivery:
    """The first copy of a delivery, as a replay of it is answered."""

    id: int
    verdict: str
    status_code: int
    message: str
    run_id: str | None
    received_at: dt.datetime


def claim_delivery(
    session: Session, repo_id: str, delivery_id: str | None, body_sha256: str, event: str, now: dt.datetime
) -> tuple[int, SeenDelivery | None]:
    """Claim an authenticated delivery for ``repo_id``: ``(row id, None)`` when this is its first
    copy, ``(row id, the first copy)`` when its delivery id or its exact body was seen before
    (nothing is written then). Run it in its own transaction: the claim must be committed before
    the delivery is acted on."""
    connection = session.connection()
    seen = _seen(connection, repo_id, delivery_id, body_sha256)
    if seen is not None and seen.verdict == PROCESSING and seen.received_at < now - ABANDONED_AFTER:
        # the process handling the first copy died (a release would have removed the claim):
        # take it over, compare-and-set on its time so only one of several redeliveries does
        taken = connection.execute(TAKE_OVER, {"p_id": seen.id, "p_then": seen.received_at, "p_now": now})
        if taken.rowcount == 1:
            return seen.id, None
    if seen is not None:
        return seen.id, seen
    values = {"repo_id": repo_id, "delivery_id": delivery_id or None, "body_sha256": body_sha256, "event": event,
              "verdict": PROCESSING, "status_code": 202, "message": "", "run_id": None, "received_at": now}
    try:
        with connection.begin_nested():
            key = connection.execute(INSERT_DELIVERY, values).inserted_primary_key
    except IntegrityError:  # the same delivery, arriving at the same moment, claimed it first
        seen = _seen(connection, repo_id, delivery_id, body_sha256)
        assert seen is not None
        return seen.id, seen
    assert key is not None
    return int(key[0]), None


def _seen(connection: sa.Connection, repo_id: str, delivery_id: str | None, body_sha256: str) -> SeenDelivery | None:
    row = None
    if delivery_id:
        row = connection.execute(SEEN_BY_ID, {"p_repo": repo_id, "p_delivery": delivery_id}).first()
    if row is None:
        row = connection.execute(SEEN_BY_BODY, {"p_repo": repo_id, "p_body": body_sha256}).first()
    if row is None:
        return None
    # UTCDateTime is applied through the table's column type: received_at comes back aware
    return SeenDelivery(int(row.id), row.verdict, int(row.status_code), row.message, row.run_id, row.received_at)


def settle_delivery(
    session: Session, row_id: int, verdict: str, status_code: int, message: str, run_id: str | None = None
) -> None:
    """Give a claimed delivery its verdict (what a redelivery of it will be answered)."""
    session.connection().execute(SETTLE_DELIVERY, {"p_id": row_id, "p_verdict": verdict, "p_status": status_code,
                                                   "p_message": message, "p_run_id": run_id})


def release_delivery(session: Session, row_id: int) -> None:
    """Drop a claim whose handling failed unexpectedly (the database went away mid-way), so the
    forge's redelivery is acted on instead of being answered "processing" for ever."""
    session.connection().execute(DELETE_DELIVERY, {"p_id": row_id})


def record_delivery(
    session: Session, repo_id: str, event: str, verdict: str, status_code: int, message: str, now: dt.datetime
) -> None:
    """Record a delivery that was refused before it was authenticated, or that had no id."""
    session.connection().execute(INSERT_DELIVERY, [{
        "repo_id": repo_id, "delivery_id": None, "body_sha256": None, "event": event[:64], "verdict": verdict,
        "status_code": status_code, "message": message, "run_id": None, "received_at": now,
    }])


def list_deliveries(session: Session, repo_id: str, limit: int = 20) -> list[WebhookDelivery]:
    """The repository's latest deliveries, newest first."""
    rows = session.connection().execute(LATEST_DELIVERIES, {"p_repo": repo_id, "p_limit": limit})
    return [WebhookDelivery(**row._mapping) for row in rows]


def link_run(
    session: Session, run_id: str, repo_id: str, kind: str, ref: str, merge_request_iid: int | None, from_fork: bool
) -> None:
    """Record that a web-hook of ``repo_id`` created ``run_id`` (in the run's own transaction)."""
    session.connection().execute(INSERT_RUN_LINK, [{
        "run_id": run_id, "p_run": run_id, "repo_id": repo_id, "kind": kind, "ref": ref,
        "merge_request_iid": merge_request_iid, "from_fork": from_fork,
    }])


def unfinished_merge_request_runs(session: Session, repo_id: str, merge_request_iid: int) -> list[str]:
    """The ids of the runs of that pull/merge request that have not ended, oldest first."""
    rows = session.connection().execute(UNFINISHED_MERGE_REQUEST_RUNS, {"p_repo": repo_id, "p_iid": merge_request_iid})
    return list(rows.scalars().all())
