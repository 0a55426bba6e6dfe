"""``POST /api/v1/runs`` with a source: a registered repository's commit, or an uploaded tree (adapter).

- ``{"source": {"repository": "acme/app", "sha": "…"}}`` (or ``"ref"``, resolved with ``git
  ls-remote`` on the repository's clone URL; default its default branch): the run is a run of
  that commit, exactly as a web-hook's (:mod:`api.forge_runs`): its pipeline file and includes
  read from the commit (unless ``pipeline`` is given: then that text is the entry file and its
  includes come from the commit), the commit checked out in every job, statuses on the commit
  when the repository has a token, older API runs of the same ref left alone.
- ``{"source": {"archive": "<base64 tar>"}}``: the tree ``sandpit submit`` sends. It is capped
  (SANDPIT_API_MAX_ARCHIVE, before base64), checked entry by entry before anything is stored
  (:func:`pipelines.files.tarballs.check_tarball`: no absolute or ``..`` names, no links out,
  no devices, caps on entries and bytes), read in memory for the pipeline file and its local
  includes, stored once by its SHA-256, and unpacked by the worker for each run.

The trust level is the caller's, as for any API run; a repository source does not make a run
trusted.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
from collections.abc import Callable

from sqlalchemy.engine import Engine
from sqlmodel import Session

from api.errors import ApiError, BadRequest, BodyTooLarge, NothingToRun, OverPolicy, PipelineInvalid, TooManyRuns
from api.forge_runs import CommitRepo, CommitRun, Refusal, plan_commit, read_commit, store_commit_run
from api.publish import Publisher, PublishFailed
from api.runs import run_trust, submitter_of
from api.schemas import ProblemPublic, RunCreate, RunCreated, job_public, run_public
from api.settings import ApiSettings, ApiToken
from api.webhooks import FALLBACK_PIPELINE_PATHS
from pipelines.files.tarballs import TarballRefused, check_tarball, read_files
from pipelines.forges.mirror import MAX_PIPELINE_BYTES, FetchFailed, MirrorError, resolve_ref
from pipelines.forges.pipeline_files import CommitPipeline
from pipelines.language.globs import compile_glob
from pipelines.language.includes import local_include_patterns
from pipelines.language.model import PipelineInputs, Plan
from pipelines.policy import LevelPolicy
from pipelines.store import repos as repo_store
from pipelines.store.db import read_scope, session_scope
from pipelines.store.inflight import count_runs_in_flight, record_submitter
from pipelines.store.outbox import mark_unpublished
from pipelines.store.sources import record_archive_source, store_archive
from pipelines.store.transitions import StoredRun, create_run

MAX_INCLUDED = 150


class SourceUnavailable(ApiError):
    """The repository's commit could not be fetched (its server is down, or has no such ref)."""

    status_code = 502
    code = "fetch_failed"


class SourceRefused(ApiError):
    """The source is not one sandpit runs: no pipeline file in it, or an archive it refuses."""

    status_code = 422
    code = "bad_source"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def submit_with_source(
    engine: Engine, publisher: Publisher, request: RunCreate, caller: ApiToken, settings: ApiSettings, *,
    run_id: str | None = None, before_publish: Callable[[], object] | None = None,
) -> RunCreated:
    """Plan, store and publish a run of ``request.source`` (see the module docstring)."""
    source = request.source
    assert source is not None
    if (source.repository is None) == (source.archive is None):
        raise BadRequest("a source is either `repository` (with `sha` or `ref`) or `archive`, not both or neither")
    trust = run_trust(caller, request.trust)
    level = settings.policy.level(trust)
    if source.archive is not None:
        return _archive_run(engine, publisher, request, source.archive, caller, level, settings.max_archive_bytes,
                            run_id, before_publish)
    return _repository_run(engine, publisher, request, caller, settings, level, run_id, before_publish)


def _repository_run(engine: Engine, publisher: Publisher, request: RunCreate, caller: ApiToken,
                    settings: ApiSettings, level: LevelPolicy, run_id: str | None,
                    before_publish: Callable[[], object] | None) -> RunCreated:
    source = request.source
    assert source is not None and source.repository is not None
    with read_scope(engine) as session:
        repo = repo_store.get_repository(session, source.repository)
    commit_repo = CommitRepo(repo.id, repo.name, repo.forge, repo.clone_url,
                             tuple(dict.fromkeys((repo.pipeline_path, *FALLBACK_PIPELINE_PATHS))),
                             repo.default_branch, repo.token_sealed is not None)
    ref = source.ref or repo.default_branch
    try:
        sha = source.sha or resolve_ref(repo.clone_url, ref)
        pipeline = read_commit(engine, settings, commit_repo, repo.clone_url, sha, level.level)
    except FetchFailed as exc:
        raise SourceUnavailable(str(exc)) from None
    except MirrorError as exc:
        raise SourceRefused(str(exc)) from None
    if request.pipeline:
        pipeline = CommitPipeline(pipeline.entry, {**pipeline.files, pipeline.entry: request.pipeline},
                                  pipeline.existing, pipeline.commit_message, pipeline.commit_author,
                                  pipeline.commit_timestamp)
    inputs = PipelineInputs(trigger="api", ref=ref, sha=sha, variables=request.variables,
                            existing_files=pipeline.existing, default_branch=repo.default_branch,
                            project_path=repo.name, commit_message=request.message or pipeline.commit_message,
                            commit_author=pipeline.commit_author, commit_timestamp=pipeline.commit_timestamp)
    admitted = _admitted(plan_commit(pipeline, inputs, level), level)
    submitter = submitter_of(caller)
    wanted = CommitRun(trust=level.level, source="api", kind="api", ref=ref, ref_kind="branch", sha=sha,
                       clone_url=repo.clone_url, project="", message=inputs.commit_message,
                       variables=request.variables, secrets=request.secrets)
    with session_scope(engine) as session:
        _check_in_flight(session, submitter, level)
        stored, queued = store_commit_run(session, settings, commit_repo, admitted, wanted, submitter,
                                          pipeline.files[pipeline.entry], _now(), run_id=run_id)
    return _published(engine, publisher, stored, queued, admitted, before_publish)


def _archive_run(engine: Engine, publisher: Publisher, request: RunCreate, encoded: str, caller: ApiToken,
                 level: LevelPolicy, cap: int, run_id: str | None, before_publish: Callable[[], object] | None,
                 ) -> RunCreated:
    source = request.source
    assert source is not None
    data = _decoded(encoded, cap)
    try:
        listing = check_tarball(data)
    except TarballRefused as exc:
        raise SourceRefused(str(exc)) from None
    entry = source.pipeline_path
    files = _archive_files(data, listing.files, entry, request.pipeline)
    if entry not in files:
        raise SourceRefused(f"the archive has no {entry} (give `pipeline`, or `source.pipeline_path`)")
    inputs = PipelineInputs(trigger="api", ref=request.ref, sha=request.sha or "0" * 40, variables=request.variables,
                            existing_files=listing.files, commit_message=request.message)
    commit = CommitPipeline(entry, files, listing.files, request.message, "", "")
    admitted = _admitted(plan_commit(commit, inputs, level), level)
    digest = hashlib.sha256(data).hexdigest()
    submitter = submitter_of(caller)
    now = _now()
    with session_scope(engine) as session:
        _check_in_flight(session, submitter, level)
        stored = create_run(session, admitted, trust=level.level, source="api", variables=request.variables,
                            secrets=request.secrets, now=now, pipeline=files[entry], ref=request.ref,
                            sha=request.sha, message=request.message, run_id=run_id, mark_sent=True)
        record_submitter(session, stored.run.id, submitter)
        store_archive(session, digest, data, now)
        record_archive_source(session, stored.run.id, digest)
    return _published(engine, publisher, stored, stored.queued, admitted, before_publish)


def _check_in_flight(session: Session, submitter: str, level: LevelPolicy) -> None:
    cap = level.max_runs_in_flight
    if cap is not None and (count := count_runs_in_flight(session, submitter)) >= cap:
        raise TooManyRuns(f"{submitter} has {count} run(s) in flight; the {level.level} policy allows at most {cap}")


def _decoded(encoded: str, cap: int) -> bytes:
    if len(encoded) > (cap // 3 + 1) * 4:  # judged before decoding: base64 is 4/3 of the bytes
        raise BodyTooLarge(f"the archive is over the limit of {cap} bytes (SANDPIT_API_MAX_ARCHIVE)")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("source.archive is not base64") from None
    if len(data) > cap:
        raise BodyTooLarge(f"the archive is {len(data)} bytes; the limit is {cap} (SANDPIT_API_MAX_ARCHIVE)")
    return data


def _archive_files(data: bytes, names: frozenset[str], entry: str, given: str) -> dict[str, str]:
    """The entry file (``given``, else the archive's) and every local include it names, read from
    the archive in memory, transitively."""
    wanted = set() if given else {entry}
    files: dict[str, str] = {entry: given} if given else {}
    queue = [entry]
    while True:
        if wanted:
            for name, raw in read_files(data, wanted, MAX_PIPELINE_BYTES).items():
                files[name] = raw.decode("utf-8", "replace")
                queue.append(name)
            wanted = set()
        if not queue or len(files) >= MAX_INCLUDED:
            return files
        current = queue.pop(0)
        if current not in files:
            continue
        for pattern in local_include_patterns(files[current], current):
            if any(char in pattern for char in "*?[{"):
                regex = compile_glob(pattern, include=True)
                wanted |= {n for n in names if regex.match(n) and n not in files}
            elif pattern in names and pattern not in files:
                wanted.add(pattern)


def _admitted(result: Plan | Refusal, level: LevelPolicy) -> Plan:
    if isinstance(result, Plan):
        return result
    if result.verdict == "no_pipeline_created":
        raise NothingToRun(result.message)
    if result.verdict == "over_policy":
        raise OverPolicy(result.problems, level.level)
    raise PipelineInvalid(result.problems)


def _published(engine: Engine, publisher: Publisher, stored: StoredRun, queued: tuple[str, ...], admitted: Plan,
               before_publish: Callable[[], object] | None) -> RunCreated:
    created = run_public(stored.run, [job_public(job, []) for job in stored.jobs])
    if before_publish is not None:
        before_publish()
    if queued:
        try:
            publisher.publish(queued)
        except PublishFailed:
            with session_scope(engine) as session:
                mark_unpublished(session, list(queued))
    warnings = [ProblemPublic.model_validate(p.as_dict()) for p in admitted.warnings]
    return RunCreated(**created.model_dump(), warnings=warnings)
