"""Runs of a repository's commit: plan from the commit, store with everything a forge run carries (adapter).

The web-hook (:mod:`api.webhooks`) and ``POST /api/v1/runs`` with a repository source
(:mod:`api.sources`) both come here once they know the commit:

- :func:`read_commit` reads the pipeline file and what it includes from the commit (the hardened
  mirror of :mod:`pipelines.forges.pipeline_files`); an ``include: project`` is resolved from
  the repositories sandpit knows, and only the run's own repository for an untrusted run (a
  fork's pull request must not read another registered repository through its pipeline);
- :func:`plan_commit` plans and admits it, or says why not (:class:`Refusal`: its verdict,
  message and problems), and :func:`refuse_on_commit` puts such a refusal on the commit as a
  ``failed`` status with the first problems, so a broken pipeline file is seen on the forge;
- :func:`store_commit_run`, in one transaction: the run, its submitter, its link to the
  repository and its source (the commit the worker checks out), held for approval if asked
  (:mod:`pipelines.store.approvals`), the older runs of the same branch or merge request it
  supersedes auto-cancelled (:mod:`pipelines.store.superseding`), and its first status,
  ``pending``, when the repository has a forge token (:mod:`pipelines.store.statuses`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy.engine import Engine
from sqlmodel import Session

from api.settings import ApiSettings
from pipelines.forges.mirror import DEFAULT_DEPTH
from pipelines.forges.pipeline_files import CommitPipeline, KnownProject, load_commit_pipeline
from pipelines.forges.statuses import describe, project_path
from pipelines.language.model import PipelineInputs, Plan
from pipelines.language.planner import plan
from pipelines.language.problems import Problem, Problems
from pipelines.policy import LevelPolicy, TrustLevel, admit
from pipelines.store import repos as repo_store
from pipelines.store.approvals import hold_run
from pipelines.store.db import read_scope, session_scope
from pipelines.store.inflight import record_submitter
from pipelines.store.sources import record_commit_source
from pipelines.store.statuses import StatusTarget, enqueue_status, watch_run
from pipelines.store.superseding import cancel_if_interruptible, superseded_runs
from pipelines.store.transitions import StoredRun, create_run


@dataclass(frozen=True, slots=True)
class CommitRepo:
    """What a run of a repository's commit needs to know of the repository."""

    id: str
    name: str
    forge: str
    clone_url: str
    pipeline_paths: tuple[str, ...]
    default_branch: str
    has_token: bool


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a commit's pipeline makes no run: a verdict, a sentence, and the problems behind it."""

    status_code: int
    verdict: str  # invalid_pipeline | over_policy | no_pipeline_created
    message: str
    problems: tuple[Problem, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class CommitRun:
    """How the run of a commit is stored: where it came from and what happens to it."""

    trust: TrustLevel
    source: Literal["webhook", "api"]
    kind: str  # push | merge_request | api (repository_run.kind)
    ref: str
    ref_kind: str
    sha: str
    clone_url: str
    project: str
    message: str
    merge_request_iid: int | None = None
    from_fork: bool = False
    hold: bool = False
    variables: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)


def read_commit(engine: Engine, settings: ApiSettings, repo: CommitRepo, clone_url: str, sha: str,
                trust: TrustLevel) -> CommitPipeline:
    """The commit's pipeline files (``FetchFailed``: the commit could not be fetched;
    ``PipelineFileMissing``: it has none of the repository's pipeline paths)."""

    def resolve(name: str) -> KnownProject | None:
        if trust != "trusted" and name != repo.name:
            return None
        with read_scope(engine) as session:
            try:
                known = repo_store.get_repository(session, name)
            except repo_store.RepositoryNotFound:
                return None
            return KnownProject(known.id, known.clone_url, known.default_branch)

    return load_commit_pipeline(settings.state_dir / "mirrors", repo.id, clone_url, sha, repo.pipeline_paths,
                                resolve, DEFAULT_DEPTH)


def plan_commit(pipeline: CommitPipeline, inputs: PipelineInputs, level: LevelPolicy) -> Plan | Refusal:
    """The admitted plan of the commit's pipeline, or the :class:`Refusal` saying why there is none."""
    result = plan(pipeline.files, inputs, entry=pipeline.entry)
    if isinstance(result, Problems):
        errors = result.errors
        listed = "; ".join(f"{p.loc.file}:{p.loc.line}:{p.loc.col} {p.message}" for p in errors[:5])
        return Refusal(422, "invalid_pipeline", f"{pipeline.entry} has {len(errors)} error(s): {listed}",
                       tuple(result.items))
    why = result.nothing_to_run()
    if why is not None:
        return Refusal(202, "no_pipeline_created", why)
    admitted = admit(result, level)
    if not isinstance(admitted, Plan):
        listed = "; ".join(p.message for p in admitted[:5])
        return Refusal(422, "over_policy", f"the pipeline asks for more than the {level.level} policy allows: "
                       f"{listed}", tuple(admitted))
    return admitted


def status_target(settings: ApiSettings, repo: CommitRepo, sha: str, project: str, kind: str,
                  run_id: str | None) -> StatusTarget:
    url = f"{settings.public_url}/ui/runs/{run_id}" if settings.public_url and run_id else ""
    return StatusTarget(repo.id, sha, project or project_path(repo.clone_url), f"sandpit/{kind}", url)


def refuse_on_commit(engine: Engine, settings: ApiSettings, repo: CommitRepo, sha: str, project: str, kind: str,
                     description: str, now: dt.datetime) -> None:
    """Put a ``failed`` status on the commit (a missing or invalid pipeline file: no run to watch)."""
    if not repo.has_token:
        return
    with session_scope(engine) as session:
        enqueue_status(session, status_target(settings, repo, sha, project, kind, None), "failed", description, now)


def first_problems(problems: Sequence[Problem], entry: str) -> str:
    """A status description out of the pipeline's errors (the forge shows ~140 characters).

    >>> from pipelines.language.problems import Loc
    >>> first_problems([Problem(Loc("ci.yml", 3, 5), "error", "x", "unknown key `scirpt`", "")], "ci.yml")
    'ci.yml:3:5 unknown key `scirpt` (1 error)'
    """
    errors = [p for p in problems if p.severity == "error"]
    if not errors:
        return f"{entry}: no job to run"
    first = errors[0]
    return f"{first.loc.file}:{first.loc.line}:{first.loc.col} {first.message} ({len(errors)} error" + (
        "s)" if len(errors) > 1 else ")")


def store_commit_run(session: Session, settings: ApiSettings, repo: CommitRepo, admitted: Plan, wanted: CommitRun,
                     submitter: str, pipeline_text: str, now: dt.datetime, run_id: str | None = None,
                     ) -> tuple[StoredRun, tuple[str, ...]]:
    """Store the run (see the module docstring): the run and the ids to publish after the commit
    (none while it is held for approval)."""
    stored = create_run(session, admitted, trust=wanted.trust, source=wanted.source, variables=wanted.variables,
                        secrets=wanted.secrets, now=now, pipeline=pipeline_text, ref=wanted.ref, sha=wanted.sha,
                        message=wanted.message, mark_sent=True, run_id=run_id)
    run_id = stored.run.id
    record_submitter(session, run_id, submitter)
    repo_store.link_run(session, run_id, repo.id, wanted.kind, wanted.ref, wanted.merge_request_iid, wanted.from_fork)
    record_commit_source(session, run_id, repo.id, wanted.clone_url, wanted.sha)
    queued = stored.queued
    state_of_run = stored.run.status
    if wanted.hold:
        hold_run(session, run_id, now)
        queued, state_of_run = (), "waiting_for_approval"
    if wanted.kind == "merge_request" or (wanted.kind == "push" and wanted.ref_kind == "branch"):
        for older in superseded_runs(session, repo.id, run_id, now, kind=wanted.kind, ref=wanted.ref,
                                     merge_request_iid=wanted.merge_request_iid):
            cancel_if_interruptible(session, older, now)
    if repo.has_token:
        target = status_target(settings, repo, wanted.sha, wanted.project, wanted.kind, run_id)
        watch_run(session, run_id, target, "pending", describe("pending", state_of_run, {}), now)
    return stored, queued
