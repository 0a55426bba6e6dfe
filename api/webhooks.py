"""A forge's web-hook delivery, from its raw bytes to a verdict and maybe a run (adapter).

The route (:mod:`api.routes.webhooks`) finds the repository from the URL
(``/api/v1/webhooks/{forge}/{repo_id}``: one URL per repository, so the secret is known before a
byte of the payload is parsed), reads the body with a byte cap, and hands it here.
:func:`receive_delivery` then, in this order:

1. checks the signature over the exact bytes received (:mod:`pipelines.forges.signatures`);
   a refused one is recorded without its delivery id (401 ``bad_signature`` /
   ``missing_signature`` / ``stale_timestamp``);
2. claims the delivery id and the body's SHA-256 (:func:`pipelines.store.repos.claim_delivery`):
   a copy seen before (same id, or same bytes under another id: GitHub and Gitea sign the body,
   not the id) is answered what the first copy was answered (``X-Sandpit-Replay: 1``) and
   nothing is done;
3. parses the JSON, checks the payload is about this repository (422 ``wrong_repository``),
   maps the event (:mod:`pipelines.forges.events`): ping 200 ``pong``; an event or action that
   builds nothing 202 (``ignored_event``, ``ref_deleted``, ``skip_ci``, ...); a closed pull
   request 200 ``cancelled`` (its unfinished runs are cancelled);
4. decides the trust: the repository's own pushes and branches are trusted, a pull request
   from a fork is untrusted, and the repository's ``fork_policy`` says whether it runs
   (``run``), waits (``approve``: the run is stored held, ``waiting_for_approval``, answered 202
   ``needs_approval`` with its id, until an admin approves it) or is refused (``never``: 202
   ``fork_refused``);
5. reads the pipeline file and what it includes from the commit (the ``read_pipeline`` seam; by
   default the hardened mirror of :mod:`api.forge_runs`; a failed fetch is 502
   ``fetch_failed`` and, like 429 ``too_many_runs``, releases the claim so a redelivery retries),
   plans it with GitLab's inputs for that event, admits it under the trust level's policy (a
   missing or invalid file, or one over the policy, puts a ``failed`` status on the commit),
   stores it with its repository link and its commit (what the worker checks out), cancels the
   older runs of the branch or merge request it supersedes, watches it for commit statuses,
   publishes its jobs: 201 ``created`` with the run id.

Every verdict is stored on the delivery's row, for a later UI and for replays.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from api.forge_runs import (
    CommitRepo,
    CommitRun,
    Refusal,
    first_problems,
    plan_commit,
    read_commit,
    refuse_on_commit,
    store_commit_run,
)
from api.publish import Publisher, PublishFailed
from api.settings import ApiSettings
from pipelines.forges import events
from pipelines.forges.events import CloseMergeRequest, EventUnreadable, Ignored, Ping, Trigger
from pipelines.forges.mirror import FetchFailed, MirrorError
from pipelines.forges.pipeline_files import CommitPipeline
from pipelines.forges.sealing import Sealer
from pipelines.forges.signatures import check_signature
from pipelines.language.model import PipelineInputs
from pipelines.language.yamltree import bad_character
from pipelines.policy import TrustLevel
from pipelines.store import repos as store
from pipelines.store.db import read_scope, session_scope
from pipelines.store.errors import RunFinished
from pipelines.store.inflight import count_runs_in_flight
from pipelines.store.outbox import mark_unpublished
from pipelines.store.transitions import cancel_unfinished_run

log = logging.getLogger("sandpit.api.webhooks")
FALLBACK_PIPELINE_PATHS = (".gitlab-ci.yml", ".sandpit.yml")
# verdicts of a passing condition (the git server was down, the repository had as many runs in
# flight as allowed): recorded, but the claim is released, so a redelivery is acted on afresh
RETRYABLE = frozenset({"fetch_failed", "too_many_runs"})


@dataclass(frozen=True, slots=True)
class WebhookAnswer:
    """What a delivery is answered (and recorded as)."""

    status_code: int
    verdict: str
    message: str
    run_id: str | None = None
    replay: bool = False

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"verdict": self.verdict, "message": self.message, "run_id": self.run_id}
        if self.status_code >= 400:
            body["error"] = self.verdict
        if self.replay:
            body["replay"] = True
        return body


@dataclass(frozen=True, slots=True)
class RepositoryView:
    """A registered repository with its secret opened (never logged: ``repr`` hides it)."""

    id: str
    name: str
    forge: str
    clone_url: str
    pipeline_path: str
    default_branch: str
    fork_policy: str
    secret: bytes
    has_token: bool = False

    def __repr__(self) -> str:
        return f"RepositoryView(id={self.id!r}, name={self.name!r}, forge={self.forge!r})"

    def pipeline_paths(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.pipeline_path, *FALLBACK_PIPELINE_PATHS)))

    def commit_repo(self) -> CommitRepo:
        return CommitRepo(self.id, self.name, self.forge, self.clone_url, self.pipeline_paths(), self.default_branch,
                          self.has_token)


PipelineReader = Callable[[RepositoryView, Trigger], CommitPipeline]


@functools.lru_cache(maxsize=8)
def _sealer(secret_key: str | None, state_dir: Path) -> Sealer:
    return Sealer.from_settings(secret_key, state_dir)


def sealer_for(settings: ApiSettings) -> Sealer:
    """The process's sealer (made once: the key file is read, or created, on first use)."""
    return _sealer(settings.secret_key, settings.state_dir)


def mirror_reader(engine: Engine, settings: ApiSettings) -> PipelineReader:
    """The default seam: fetch the commit into ``<state_dir>/mirrors`` and read its pipeline
    file and what that includes there (:func:`api.forge_runs.read_commit`)."""

    def read(repo: RepositoryView, trigger: Trigger) -> CommitPipeline:
        trust: TrustLevel = "untrusted" if trigger.from_fork else "trusted"
        return read_commit(engine, settings, repo.commit_repo(), trigger.clone_url or repo.clone_url, trigger.sha,
                           trust)

    return read


def load_repository(engine: Engine, sealer: Sealer, ref: str) -> RepositoryView:
    """The repository ``ref`` names (``RepositoryNotFound`` → 404), its secret opened."""
    with read_scope(engine) as session:
        repo = store.get_repository(session, ref)
        return RepositoryView(repo.id, repo.name, repo.forge, repo.clone_url, repo.pipeline_path,
                              repo.default_branch, repo.fork_policy, sealer.open(repo.secret_sealed).encode(),
                              repo.token_sealed is not None)


def record_refusal(engine: Engine, repo: RepositoryView, event: str, answer: WebhookAnswer) -> WebhookAnswer:
    """Record a delivery refused before it was authenticated (no delivery id kept); ``answer``."""
    with session_scope(engine) as session:
        store.record_delivery(session, repo.id, event, answer.verdict, answer.status_code, answer.message, _now())
    return answer


def receive_delivery(
    engine: Engine,
    publisher: Publisher,
    settings: ApiSettings,
    repo: RepositoryView,
    forge: str,
    headers: Mapping[str, str],
    body: bytes,
    read_pipeline: PipelineReader,
) -> WebhookAnswer:
    """The answer to one delivery (see the module docstring); ``headers`` have lower-case names."""
    event = events.event_name(forge, headers)
    if repo.forge != forge:
        return record_refusal(engine, repo, event, WebhookAnswer(
            404, "wrong_forge", f"repository {repo.name} is registered as {repo.forge}; send its web-hook to "
            f"/api/v1/webhooks/{repo.forge}/{repo.id}"))
    refused = check_signature(forge, repo.secret, headers, body, now=time.time())
    if refused is not None:
        log.warning("web-hook for %s refused: %s", repo.name, refused.reason)
        return record_refusal(engine, repo, event, WebhookAnswer(401, refused.reason, refused.message))
    delivery = events.delivery_id(forge, headers) or None
    digest = hashlib.sha256(body).hexdigest()
    with session_scope(engine) as session:
        row_id, seen = store.claim_delivery(session, repo.id, delivery, digest, event[:64], _now())
    if seen is not None:
        return WebhookAnswer(seen.status_code, seen.verdict, seen.message, seen.run_id, replay=True)
    try:
        return _act(engine, publisher, settings, repo, forge, event, body, read_pipeline, row_id)
    except Exception:
        with session_scope(engine) as session:
            store.release_delivery(session, row_id)
        raise


def _act(
    engine: Engine, publisher: Publisher, settings: ApiSettings, repo: RepositoryView, forge: str, event: str,
    body: bytes, read_pipeline: PipelineReader, row_id: int,
) -> WebhookAnswer:
    def settle(answer: WebhookAnswer) -> WebhookAnswer:
        with session_scope(engine) as session:
            if answer.verdict in RETRYABLE:  # the claim goes, so the forge's redelivery is acted on
                store.release_delivery(session, row_id)
                store.record_delivery(session, repo.id, event, answer.verdict, answer.status_code, answer.message,
                                      _now())
            else:
                store.settle_delivery(session, row_id, answer.verdict, answer.status_code, answer.message,
                                      answer.run_id)
        return answer

    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return settle(WebhookAnswer(400, "bad_payload", f"the body is not JSON: {exc}"))
    if not isinstance(payload, dict):
        return settle(WebhookAnswer(400, "bad_payload", "the body is not a JSON object"))
    urls, full_name = events.payload_repository_urls(forge, payload)
    if (urls or event != "ping") and events.normalise_url(repo.clone_url) not in urls:
        return settle(WebhookAnswer(422, "wrong_repository", f"the payload is about {full_name or 'no repository'}"
                                    f", not {repo.name} ({repo.clone_url}); check the web-hook's URL"))
    try:
        found = events.read_event(forge, event, payload)
    except EventUnreadable as exc:
        return settle(WebhookAnswer(400, "bad_payload", str(exc)))
    if isinstance(found, Ping):
        return settle(WebhookAnswer(200, "pong", f"web-hook of {repo.name} reached sandpit"))
    if isinstance(found, Ignored):
        return settle(WebhookAnswer(202, found.reason, found.message))
    if isinstance(found, CloseMergeRequest):
        return settle(_cancel_merge_request(engine, repo, found.iid))
    answer = _trigger(engine, publisher, settings, repo, found, read_pipeline, row_id)
    return answer if answer.run_id is not None else settle(answer)  # a stored run settled its claim


def _cancel_merge_request(engine: Engine, repo: RepositoryView, iid: int) -> WebhookAnswer:
    cancelled: list[str] = []
    with session_scope(engine) as session:
        for run_id in store.unfinished_merge_request_runs(session, repo.id, iid):
            try:
                cancel_unfinished_run(session, run_id, _now())
                cancelled.append(run_id)
            except RunFinished:
                pass
    return WebhookAnswer(200, "cancelled", f"merge request !{iid} closed: {len(cancelled)} run(s) cancelled"
                         + (f" ({', '.join(cancelled)})" if cancelled else ""))


def _trigger(
    engine: Engine, publisher: Publisher, settings: ApiSettings, repo: RepositoryView, trigger: Trigger,
    read_pipeline: PipelineReader, row_id: int,
) -> WebhookAnswer:
    problem = _field_problem(trigger)
    if problem is not None:
        return WebhookAnswer(400, "bad_payload", problem)
    trust: TrustLevel = "untrusted" if trigger.from_fork else "trusted"
    if trigger.from_fork and repo.fork_policy == "never":
        return WebhookAnswer(202, "fork_refused", f"merge request !{trigger.merge_request_iid} comes from a fork "
                             f"({trigger.merge_request_source_project_path}); fork_policy is `never`")
    commit_repo = repo.commit_repo()
    kind = "merge_request" if trigger.trigger == "merge_request" else "push"
    try:
        source = read_pipeline(repo, trigger)
    except FetchFailed as exc:
        return WebhookAnswer(502, "fetch_failed", str(exc))
    except MirrorError as exc:
        refuse_on_commit(engine, settings, commit_repo, trigger.sha, trigger.project_path, kind,
                         f"no pipeline file: {exc}", _now())
        return WebhookAnswer(422, "no_pipeline_file", str(exc))
    fields = trigger.pipeline_fields()
    if not trigger.commit_message:
        fields.update(commit_message=source.commit_message, commit_author=source.commit_author,
                      commit_timestamp=source.commit_timestamp)
    if events.skips_ci(fields["commit_message"]):
        return WebhookAnswer(202, "skip_ci", "the commit message asks to skip CI (`[skip ci]` or `[ci skip]`)")
    inputs = PipelineInputs(**fields, default_branch=repo.default_branch, existing_files=source.existing)
    level = settings.policy.level(trust)
    admitted = plan_commit(source, inputs, level)
    if isinstance(admitted, Refusal):
        if admitted.verdict != "no_pipeline_created":
            refuse_on_commit(engine, settings, commit_repo, trigger.sha, trigger.project_path, kind,
                             first_problems(admitted.problems, source.entry), _now())
        return WebhookAnswer(admitted.status_code, admitted.verdict, admitted.message)
    submitter = f"repo:{repo.name}"
    hold = trigger.from_fork and repo.fork_policy == "approve"
    wanted = CommitRun(trust=trust, source="webhook", kind=kind, ref=trigger.ref, ref_kind=trigger.ref_kind,
                       sha=trigger.sha, clone_url=trigger.clone_url or repo.clone_url, project=trigger.project_path,
                       message=fields["commit_message"], merge_request_iid=trigger.merge_request_iid,
                       from_fork=trigger.from_fork, hold=hold)
    with session_scope(engine) as session:
        cap = level.max_runs_in_flight
        if cap is not None and count_runs_in_flight(session, submitter) >= cap:
            return WebhookAnswer(429, "too_many_runs", f"{submitter} has {cap} run(s) in flight, as many as the "
                                 f"{trust} policy allows")
        stored, queued = store_commit_run(session, settings, commit_repo, admitted, wanted, submitter,
                                          source.files[source.entry], _now())
        what = "merge request" if trigger.trigger == "merge_request" else trigger.ref_kind
        if hold:
            created = WebhookAnswer(202, "needs_approval", f"merge request !{trigger.merge_request_iid} comes from a "
                                    f"fork ({trigger.merge_request_source_project_path}); its untrusted run waits "
                                    f"for an admin's approval (sandpit approve {stored.run.id})", stored.run.id)
        else:
            created = WebhookAnswer(201, "created", f"{trust} run for {what} {trigger.ref} at {trigger.sha[:12]}",
                                    stored.run.id)
        # settled in the run's own transaction: a crash after the commit cannot leave the claim
        # "processing" for a later redelivery to take over and create the run a second time
        store.settle_delivery(session, row_id, created.verdict, created.status_code, created.message, created.run_id)
    if queued:
        try:
            publisher.publish(queued)
        except PublishFailed as exc:
            log.warning("publishing %d job(s) failed (%s); the outbox sweeper will retry", len(queued), exc)
            with session_scope(engine) as session:
                mark_unpublished(session, list(queued))
    return created


def _field_problem(trigger: Trigger) -> str | None:
    """A payload field that would become a variable and holds what no run may hold."""
    for name, value, multiline in (("ref", trigger.ref, False), ("sha", trigger.sha, False),
                                   ("merge request target", trigger.merge_request_target or "", False),
                                   ("commit message", trigger.commit_message, True),
                                   ("merge request title", trigger.merge_request_title, False)):
        found = bad_character(value, multiline=multiline) if multiline else bad_character(value)
        if found is not None:
            return f"the {name} holds {found}"
    if len(trigger.ref) > 255:
        return "the ref is over 255 characters"
    return None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
