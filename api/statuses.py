"""The API's commit status sender: one thread that reports watched runs and sends the outbox (adapter).

Every round (:data:`POLL_S`) it reads the watched runs (:func:`pipelines.store.statuses.watched_runs`)
and records the state each should now report (pending → running → success / failed / canceled,
each with a description such as ``3 passed, 1 failed``), then sends the statuses that are due,
one HTTP request each (:mod:`pipelines.forges.statuses` builds it, httpx sends it), with the
repository's forge token opened only for that request. The forge's answer decides:

- 2xx: sent;
- a refusal that will not change (401, 403, 404, 422, ...): settled as refused, with the answer
  (a bad token or an unknown repository must not be retried for ever);
- anything else (a forge that is down, 5xx, 429, a timeout, no connection): tried again after a
  doubling delay (2 s, 4 s, ... capped at 10 min), never dropped. A newer status of the same
  commit written meanwhile supersedes it (the store sends only the newest).

It runs beside the request handlers, never inside one and never in a job's path: a forge that is
down delays statuses and nothing else. httpx was chosen for its timeouts on every phase and its
one exception tree for transport failures (the project uses it for its clients already).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

import httpx
from sqlalchemy.engine import Engine

from api.settings import ApiSettings
from pipelines.forges.sealing import Sealer
from pipelines.forges.statuses import (
    StatusUnsendable,
    api_base,
    describe,
    permanent_refusal,
    retry_delay,
    run_state,
    status_request,
)
from pipelines.store import repos as repo_store
from pipelines.store.db import read_scope, session_scope
from pipelines.store.models import Repository
from pipelines.store.statuses import DueStatus, any_due, claim_due, report, settle, watched_runs

log = logging.getLogger("sandpit.api.statuses")
POLL_S = 0.5
LEASE = dt.timedelta(seconds=60)  # a claimed status not settled by then is sent again (the sender died)
TIMEOUT = httpx.Timeout(10.0, connect=5.0)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class StatusSender:
    """See the module docstring; ``start``/``stop`` run it on a daemon thread, ``run_once`` is one round."""

    def __init__(self, engine: Engine, settings: ApiSettings, sealer: Sealer, *, poll_s: float = POLL_S,
                 client: httpx.Client | None = None) -> None:
        self.engine, self.settings, self.sealer, self.poll_s = engine, settings, sealer, poll_s
        self.client = client or httpx.Client(timeout=TIMEOUT, follow_redirects=False, trust_env=False)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sandpit-statuses", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Start the next round now (a run was created)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        self.client.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once(_now())
            except Exception as exc:  # the database away for a moment: the next round retries
                log.warning("commit statuses: a round failed: %s", exc)
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def run_once(self, now: dt.datetime) -> int:
        """Record what the watched runs report now, send what is due; how many were sent."""
        self._watch(now)
        return self._send(now)

    def _watch(self, now: dt.datetime) -> None:
        with read_scope(self.engine) as session:
            watched = watched_runs(session)
        for run in watched:
            state = run_state(run.status, run.jobs)
            if state != run.reported:
                with session_scope(self.engine) as session:
                    report(session, run, state, describe(state, run.status, run.jobs), now)

    def _send(self, now: dt.datetime) -> int:
        with read_scope(self.engine) as session:
            if not any_due(session, now):
                return 0
        with session_scope(self.engine) as session:
            due = claim_due(session, now, LEASE)
        repos: dict[str, Repository | None] = {}
        sent = 0
        for status in due:
            if status.repo_id not in repos:
                with read_scope(self.engine) as session:
                    try:
                        repos[status.repo_id] = repo_store.get_repository(session, status.repo_id)
                    except repo_store.RepositoryNotFound:
                        repos[status.repo_id] = None
            sent += self._send_one(status, repos[status.repo_id])
        return sent

    def _send_one(self, status: DueStatus, repo: Repository | None) -> int:
        attempts = status.attempts + 1
        done_at = _now()
        if repo is None or repo.token_sealed is None:
            why = "the repository was removed" if repo is None else "the repository has no forge token any more"
            self._settle(status, attempts, f"not sent: {why}", done_at, None)
            return 0
        try:
            request = status_request(repo.forge, repo.api_url or api_base(repo.forge, repo.clone_url), status.project,
                                     status.sha, self.sealer.open(repo.token_sealed), status.state, status.context,
                                     status.description, status.target_url)
        except StatusUnsendable as exc:
            self._settle(status, attempts, f"not sent: {exc}", done_at, None)
            return 0
        try:
            answer = self.client.request(request.method, request.url, headers=request.headers, json=request.json)
        except httpx.HTTPError as exc:
            self._retry(status, attempts, f"{type(exc).__name__}: {exc}")
            return 0
        outcome = f"{answer.status_code} {answer.reason_phrase}"
        if answer.is_success:
            self._settle(status, attempts, outcome, _now(), None)
            log.info("status %s (%s) sent for %s %s", status.state, status.context, repo.name, status.sha[:12])
            return 1
        detail = f"{outcome}: {answer.text[:300]}"
        if permanent_refusal(answer.status_code):
            log.warning("status for %s %s refused by the forge: %s", repo.name, status.sha[:12], outcome)
            self._settle(status, attempts, f"refused: {detail}", _now(), None)
        else:
            self._retry(status, attempts, detail)
        return 0

    def _retry(self, status: DueStatus, attempts: int, outcome: str) -> None:
        delay = retry_delay(attempts)
        log.info("status %s for %s not sent (%s); next try in %.0fs", status.state, status.sha[:12], outcome, delay)
        self._settle(status, attempts, outcome, None, _now() + dt.timedelta(seconds=delay))

    def _settle(self, status: DueStatus, attempts: int, outcome: str, sent_at: dt.datetime | None,
                retry_at: dt.datetime | None) -> None:
        with session_scope(self.engine) as session:
            settle(session, status.id, attempts, outcome, sent_at=sent_at, retry_at=retry_at)
