"""The values the planner takes and returns: inputs, policy, concrete jobs and the plan (pure).

Everything here is a frozen dataclass; mappings are stored as tuples of pairs so plans are
hashable and cannot be changed by the code that receives them.

>>> job = Job(name="lint", stage="test", loc=Loc("ci.yml", 1, 1), script=("ruff check",))
>>> job.env()
{}
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pipelines.language.problems import Loc, Problem

Trigger = Literal["push", "merge_request", "web", "api", "schedule"]
RefKind = Literal["branch", "tag"]
When = Literal["on_success", "on_failure", "always", "manual", "delayed"]
TRIGGERS: tuple[str, ...] = ("push", "merge_request", "web", "api", "schedule")
OnNewCommit = Literal["conservative", "interruptible", "none"]
OnJobFailure = Literal["all", "none"]
ON_NEW_COMMIT: tuple[str, ...] = ("conservative", "interruptible", "none")
ON_JOB_FAILURE: tuple[str, ...] = ("all", "none")

GITLAB_DEFAULT_STAGES: tuple[str, ...] = (".pre", "build", "test", "deploy", ".post")


@dataclass(frozen=True)
class PipelineInputs:
    """What started the pipeline. ``changed_files`` None means "unknown" (GitLab then treats every
    ``changes`` rule as true); ``existing_files`` None means "the files given to the planner"."""

    trigger: Trigger = "push"
    ref: str = "main"
    sha: str = "0000000000000000000000000000000000000000"
    ref_kind: RefKind = "branch"
    variables: Mapping[str, str] = field(default_factory=dict)
    changed_files: tuple[str, ...] | None = None
    existing_files: frozenset[str] | None = None
    default_branch: str = "main"
    merge_request_target: str | None = None
    #: merge request pipelines from a forge: the number, its title and where the source branch lives
    merge_request_iid: int | None = None
    merge_request_title: str = ""
    merge_request_source_project_path: str = ""
    merge_request_source_project_url: str = ""
    project_path: str = "local/project"
    pipeline_id: int = 1
    project_dir: str = "/workspace"
    #: the commit, where it is known (a local git tree, a forge's push); empty or zero when not
    commit_message: str = ""
    commit_timestamp: str = ""
    commit_author: str = ""
    before_sha: str = "0000000000000000000000000000000000000000"
    project_url: str = ""
    pipeline_iid: int | None = None
    server_url: str = ""


@dataclass(frozen=True, slots=True)
class SandboxPolicy:
    """The server's caps on what a pipeline may ask for under ``sandbox:`` (None: no cap)."""

    max_memory_bytes: int | None = None
    max_cpus: float | None = None
    max_pids: int | None = None
    max_disk_bytes: int | None = None
    networks: tuple[str, ...] = ("none", "egress")
    runtimes: tuple[str, ...] = ("crun", "runc", "runsc")
    profiles: tuple[str, ...] = ("default", "strict")


@dataclass(frozen=True, slots=True)
class Image:
    name: str
    entrypoint: tuple[str, ...] | None = None
    #: GitLab's image:pull_policy, in order (each one tried when the one before could not reach
    #: the registry); None: the worker's default (SANDPIT_PULL_POLICY)
    pull_policy: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Service:
    """One of a job's ``services:``, variables expanded: the image to run beside the job, the names
    it answers to (``alias`` as written; ``pipelines.language.services.service_aliases`` adds the
    ones GitLab derives from the image name), what it runs, and its own ``variables`` (the job's
    come first, these win)."""

    name: str
    alias: str | None = None
    entrypoint: tuple[str, ...] | None = None
    command: tuple[str, ...] | None = None
    variables: tuple[tuple[str, str], ...] = ()
    pull_policy: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Need:
    job: str
    artifacts: bool = True
    optional: bool = False


@dataclass(frozen=True, slots=True)
class AllowFailure:
    allowed: bool = False
    exit_codes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Retry:
    max: int = 0
    when: tuple[str, ...] = ("always",)
    exit_codes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Artifacts:
    paths: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    expire_in_seconds: int | None = None  # None: kept until the server's default expiry ("never" too)
    expire_never: bool = False
    when: str = "on_success"
    name: str | None = None
    junit: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Cache:
    key: str = "default"
    key_files: tuple[str, ...] = ()  # when set, the executor hashes these files into the key
    key_prefix: str | None = None
    paths: tuple[str, ...] = ()
    policy: str = "pull-push"
    when: str = "on_success"


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """What the job asks of its sandbox; None means "the server's default"."""

    memory_bytes: int | None = None
    cpus: float | None = None
    pids: int | None = None
    disk_bytes: int | None = None
    network: str | None = None
    runtime: str | None = None
    profile: str | None = None
    log_bytes: int | None = None  # no pipeline key: the server policy's log limit (pipelines.policy)


@dataclass(frozen=True, slots=True)
class Job:
    """One concrete job of a run: extends, matrix and rules applied, every field resolved."""

    name: str
    stage: str
    loc: Loc
    base_name: str = ""
    image: Image | None = None
    services: tuple[Service, ...] = ()
    script: tuple[str, ...] = ()  # before_script + script
    after_script: tuple[str, ...] = ()
    variables: tuple[tuple[str, str], ...] = ()
    needs: tuple[Need, ...] | None = None  # None: no `needs`, the job follows stage order
    depends_on: tuple[str, ...] = ()  # DAG predecessors: from needs, else every job of earlier stages
    dependencies: tuple[str, ...] | None = None  # None: artifacts of every predecessor
    when: When = "on_success"
    start_in_seconds: int | None = None
    allow_failure: AllowFailure = AllowFailure()
    retry: Retry = Retry()
    timeout_seconds: int | None = None
    #: a newer pipeline of the same branch or merge request may cancel it (GitLab's auto-cancel)
    interruptible: bool = False
    artifacts: Artifacts | None = None
    caches: tuple[Cache, ...] = ()
    sandbox: SandboxSpec = SandboxSpec()
    matrix: tuple[tuple[str, str], ...] = ()
    node_index: int | None = None
    node_total: int | None = None

    def env(self) -> dict[str, str]:
        return dict(self.variables)


@dataclass(frozen=True, slots=True)
class AutoCancel:
    """GitLab's ``workflow:auto_cancel`` as the run keeps it (``workflow:rules:auto_cancel`` of the
    deciding rule merged over it, key by key). ``on_new_commit``: what a newer pipeline of the same
    branch or merge request does to this one (``conservative``: cancel it only while no
    non-interruptible job has started; ``interruptible``: cancel its interruptible jobs only;
    ``none``: nothing). ``on_job_failure``: ``all`` cancels the rest of this run when a job fails.

    >>> AutoCancel().is_default(), AutoCancel(on_job_failure="all").is_default()
    (True, False)
    """

    on_new_commit: OnNewCommit = "conservative"
    on_job_failure: OnJobFailure = "none"

    def is_default(self) -> bool:
        return self.on_new_commit == "conservative" and self.on_job_failure == "none"


@dataclass(frozen=True, slots=True)
class Plan:
    """The planned run: stages in order, jobs in stage order, and the warnings met on the way.
    ``created`` is False when ``workflow: rules`` decided not to run this pipeline."""

    stages: tuple[str, ...]
    jobs: tuple[Job, ...]
    warnings: tuple[Problem, ...] = ()
    created: bool = True
    variables: tuple[tuple[str, str], ...] = ()
    auto_cancel: AutoCancel = AutoCancel()

    def nothing_to_run(self) -> str | None:
        """Why this plan runs no job, in GitLab's words, or None when it runs some.

        >>> Plan(stages=(), jobs=(), created=False).nothing_to_run()
        'workflow:rules create no pipeline for this trigger and ref'
        >>> Plan(stages=("test",), jobs=()).nothing_to_run()
        'the rules (or only/except) of every job leave it out of this pipeline: no job to run'
        """
        if not self.created:
            return "workflow:rules create no pipeline for this trigger and ref"
        if not self.jobs:
            return "the rules (or only/except) of every job leave it out of this pipeline: no job to run"
        return None

    def job(self, name: str) -> Job:
        for job in self.jobs:
            if job.name == name:
                return job
        raise KeyError(name)

    def names(self) -> list[str]:
        return [job.name for job in self.jobs]

    def edges(self) -> Iterator[tuple[str, str]]:
        """Every DAG edge as (predecessor, job)."""
        for job in self.jobs:
            for before in job.depends_on:
                yield before, job.name
