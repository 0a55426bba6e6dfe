"""The server policy (pipelines/policy.py): settings, caps, defaults — tables of cases, no services."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest

import pipelines.policy
from pipelines.language.model import Job, Loc, Plan, SandboxSpec
from pipelines.language.planner import plan
from pipelines.policy import Policy, PolicyError, admit, check_jobs, fill_defaults

GiB = 1024**3
LOC = Loc("ci.yml", 3, 1)


def job(name: str = "t", timeout: int | None = None, **sandbox: object) -> Job:
    return Job(name=name, stage="test", loc=LOC, timeout_seconds=timeout, sandbox=SandboxSpec(**sandbox))  # type: ignore[arg-type]


def test_module_is_pure() -> None:
    """The policy imports no I/O library and no api/worker module (it is built from a mapping)."""
    tree = ast.parse(Path(pipelines.policy.__file__).read_text())
    nodes = list(ast.walk(tree))
    roots = {alias.name.split(".")[0] for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in nodes if isinstance(node, ast.ImportFrom) and node.module}
    assert not roots & {"os", "api", "worker", "redis", "sqlalchemy", "sqlmodel", "subprocess", "socket"}


# --- settings -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("env", "level", "field", "expected"),
    [
        ({}, "untrusted", "max_memory_bytes", 4 * GiB),
        ({}, "untrusted", "egress", False),
        ({}, "trusted", "egress", True),
        ({}, "untrusted", "max_jobs", 500),
        ({}, "untrusted", "memory_bytes", 2 * GiB),
        ({"SANDPIT_POLICY_UNTRUSTED_MEMORY": "512M"}, "untrusted", "max_memory_bytes", 512 * 1024**2),
        # a lowered cap pulls the built-in default down with it
        ({"SANDPIT_POLICY_UNTRUSTED_MEMORY": "512M"}, "untrusted", "memory_bytes", 512 * 1024**2),
        ({"SANDPIT_POLICY_UNTRUSTED_MEMORY": "512M"}, "trusted", "max_memory_bytes", 16 * GiB),
        ({"SANDPIT_POLICY_TRUSTED_CPUS": "none"}, "trusted", "max_cpus", None),
        ({"SANDPIT_POLICY_UNTRUSTED_CPUS": "0.5"}, "untrusted", "cpus", 0.5),
        ({"SANDPIT_POLICY_UNTRUSTED_TIMEOUT": "10m"}, "untrusted", "max_timeout_s", 600),
        ({"SANDPIT_POLICY_UNTRUSTED_TIMEOUT": "10m"}, "untrusted", "timeout_s", 600),
        ({"SANDPIT_POLICY_UNTRUSTED_EGRESS": "yes"}, "untrusted", "egress", True),
        ({"SANDPIT_POLICY_UNTRUSTED_RUNTIMES": "runsc"}, "untrusted", "runtimes", ("runsc",)),
        # only runsc allowed: a job that names none gets runsc, never the worker's own choice
        ({"SANDPIT_POLICY_UNTRUSTED_RUNTIMES": "runsc"}, "untrusted", "runtime", "runsc"),
        ({}, "untrusted", "runtime", None),
        ({"SANDPIT_POLICY_TRUSTED_JOBS": "2000"}, "trusted", "max_jobs", 2000),
        ({"SANDPIT_POLICY_UNTRUSTED_RUNS": "3"}, "untrusted", "max_runs_in_flight", 3),
        ({"SANDPIT_POLICY_UNTRUSTED_LOG": "1M"}, "untrusted", "log_bytes", 1024**2),
        ({"SANDPIT_OTHER": "x"}, "untrusted", "max_pids", 2048),
    ],
)
def test_settings(env: dict[str, str], level: str, field: str, expected: object) -> None:
    """Each SANDPIT_POLICY_* variable sets its value; unset ones keep the documented defaults."""
    assert getattr(Policy.from_env(env).level(level), field) == expected


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"SANDPIT_POLICY_UNTRUSTED_MEMROY": "1G"}, "did you mean SANDPIT_POLICY_UNTRUSTED_MEMORY"),
        ({"SANDPIT_POLICY_ADMIN_MEMORY": "1G"}, "is not a policy setting"),
        ({"SANDPIT_POLICY_UNTRUSTED_MEMORY": "lots"}, "SANDPIT_POLICY_UNTRUSTED_MEMORY: 'lots' is not a size"),
        ({"SANDPIT_POLICY_UNTRUSTED_CPUS": "-1"}, "SANDPIT_POLICY_UNTRUSTED_CPUS"),
        ({"SANDPIT_POLICY_UNTRUSTED_EGRESS": "maybe"}, "is not true or false"),
        ({"SANDPIT_POLICY_UNTRUSTED_RUNTIMES": "docker"}, "is not a comma-separated list"),
        ({"SANDPIT_POLICY_UNTRUSTED_JOBS": "0"}, "SANDPIT_POLICY_UNTRUSTED_JOBS"),
        ({"SANDPIT_POLICY_UNTRUSTED_MEMORY": "1G", "SANDPIT_POLICY_UNTRUSTED_DEFAULT_MEMORY": "2G"},
         "SANDPIT_POLICY_UNTRUSTED_DEFAULT_MEMORY (2 GiB) is over SANDPIT_POLICY_UNTRUSTED_MEMORY (1 GiB)"),
        ({"SANDPIT_POLICY_UNTRUSTED_RUNTIMES": "runsc", "SANDPIT_POLICY_UNTRUSTED_DEFAULT_RUNTIME": "crun"},
         "is not in SANDPIT_POLICY_UNTRUSTED_RUNTIMES"),
    ],
)
def test_bad_settings(env: dict[str, str], fragment: str) -> None:
    """A setting that cannot be used stops start-up with a message naming it."""
    with pytest.raises(PolicyError) as caught:
        Policy.from_env(env)
    assert fragment in str(caught.value)


# --- caps -----------------------------------------------------------------------------------

UNTRUSTED = Policy.from_env({}).untrusted


@pytest.mark.parametrize(
    ("planned", "setting", "fragment"),
    [
        (job(memory_bytes=4 * GiB + 1), "SANDPIT_POLICY_UNTRUSTED_MEMORY", "asks for memory 4 GiB"),
        (job(memory_bytes=200 * GiB), "SANDPIT_POLICY_UNTRUSTED_MEMORY", "memory 200 GiB"),
        (job(cpus=64.0), "SANDPIT_POLICY_UNTRUSTED_CPUS", "cpus 64; the untrusted policy allows at most 2"),
        (job(pids=5000), "SANDPIT_POLICY_UNTRUSTED_PIDS", "pids 5000"),
        (job(disk_bytes=9 * GiB), "SANDPIT_POLICY_UNTRUSTED_DISK", "disk 9 GiB"),
        (job(timeout=7200), "SANDPIT_POLICY_UNTRUSTED_TIMEOUT", "a timeout of 2h"),
        (job(log_bytes=17 * 1024**2), "SANDPIT_POLICY_UNTRUSTED_LOG", "a log limit of 17 MiB"),
        (job(network="egress"), "SANDPIT_POLICY_UNTRUSTED_EGRESS", "allows no egress"),
    ],
)
def test_each_cap_refuses_what_is_over_it(planned: Job, setting: str, fragment: str) -> None:
    """A request over a cap is one over-policy error at the job, naming the cap and its setting."""
    problems = check_jobs([planned], UNTRUSTED)
    assert [(p.code, p.severity, p.loc) for p in problems] == [("over-policy", "error", LOC)]
    assert fragment in problems[0].message and f"({setting})" in problems[0].message
    assert "job `t`" in problems[0].message


@pytest.mark.parametrize(
    "planned",
    [
        job(),
        job(memory_bytes=4 * GiB, cpus=2.0, pids=2048, disk_bytes=8 * GiB, timeout=3600),  # exactly at the caps
        job(network="none", runtime="runsc", profile="strict"),
    ],
)
def test_at_or_under_the_caps_is_admitted(planned: Job) -> None:
    """Asking for exactly the cap, or nothing, is fine."""
    assert check_jobs([planned], UNTRUSTED) == ()


def test_runtimes_cap() -> None:
    """A runtime the level does not list is refused by name; the allowed one passes."""
    only_runsc = Policy.from_env({"SANDPIT_POLICY_UNTRUSTED_RUNTIMES": "runsc"}).untrusted
    problems = check_jobs([job(runtime="crun")], only_runsc)
    assert len(problems) == 1 and "runtime crun" in problems[0].message
    assert "(SANDPIT_POLICY_UNTRUSTED_RUNTIMES)" in problems[0].message
    assert check_jobs([job(runtime="runsc")], only_runsc) == ()


def test_no_cap_means_anything() -> None:
    """`none` lifts a numeric cap."""
    lifted = Policy.from_env({"SANDPIT_POLICY_TRUSTED_MEMORY": "none", "SANDPIT_POLICY_TRUSTED_CPUS": "none"}).trusted
    assert check_jobs([job(memory_bytes=10**13, cpus=512.0)], lifted) == ()


def test_every_problem_of_a_run_at_once() -> None:
    """Several jobs over several caps give every problem, not the first one."""
    problems = check_jobs([job("a", memory_bytes=100 * GiB, cpus=9.0), job("b", network="egress")], UNTRUSTED)
    assert [p.message.split(";")[0] for p in problems] == [
        "job `a` asks for memory 100 GiB", "job `a` asks for cpus 9", "job `b` asks for network: egress"]


def test_jobs_per_run_cap() -> None:
    """One job over the jobs-per-run cap is refused once, at the first job past the cap."""
    capped = Policy.from_env({"SANDPIT_POLICY_UNTRUSTED_JOBS": "3"}).untrusted
    jobs = [replace(job(f"j{i}"), loc=Loc("ci.yml", i + 1, 1)) for i in range(4)]
    problems = check_jobs(jobs, capped)
    assert len(problems) == 1 and problems[0].loc == Loc("ci.yml", 4, 1)
    assert "plans 4 jobs; the untrusted policy allows at most 3 per run (SANDPIT_POLICY_UNTRUSTED_JOBS)" in (
        problems[0].message)
    assert check_jobs(jobs[:3], capped) == ()


def test_trusted_level_is_looser() -> None:
    """The same request the untrusted level refuses, the trusted one admits."""
    asked = [job(memory_bytes=8 * GiB, cpus=4.0, network="egress")]
    assert check_jobs(asked, UNTRUSTED) and not check_jobs(asked, Policy.from_env({}).trusted)


def test_job_names_in_messages_are_escaped() -> None:
    """A name with a control character cannot put raw escape bytes into a problem line."""
    problems = check_jobs([job("a\x1b]0;pwned\x07", network="egress")], UNTRUSTED)
    assert "\x1b" not in problems[0].message and "\\x1b" in problems[0].message


# --- defaults -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("planned", "field", "expected"),
    [
        (job(), "memory_bytes", 2 * GiB),
        (job(), "cpus", 1.0),
        (job(), "pids", 1024),
        (job(), "disk_bytes", 4 * GiB),
        (job(), "log_bytes", 16 * 1024**2),
        (job(), "runtime", None),
        (job(memory_bytes=GiB), "memory_bytes", GiB),  # what the pipeline says is kept
        (job(cpus=0.5), "cpus", 0.5),
        (job(network="egress"), "network", "egress"),
    ],
)
def test_defaults_fill_what_the_pipeline_omits(planned: Job, field: str, expected: object) -> None:
    """Every limit left out gets the level's default; what the pipeline set is kept as is."""
    assert getattr(fill_defaults(planned, UNTRUSTED).sandbox, field) == expected


def test_timeout_default() -> None:
    """A job without `timeout:` gets the level's default timeout; one with it keeps its own."""
    assert fill_defaults(job(), UNTRUSTED).timeout_seconds == 3600
    assert fill_defaults(job(timeout=60), UNTRUSTED).timeout_seconds == 60


def test_admit_a_planned_pipeline() -> None:
    """admit() on a real plan: over the cap gives problems; under it, the jobs with defaults."""
    over = plan({"ci.yml": "big:\n  script: [x]\n  sandbox: {memory: 200G}\n"})
    assert isinstance(over, Plan)
    problems = admit(over, UNTRUSTED)
    assert isinstance(problems, tuple) and problems[0].loc == Loc("ci.yml", 1, 1)
    fine = plan({"ci.yml": "small:\n  script: [x]\n  sandbox: {memory: 1G}\n  timeout: 5m\n"})
    assert isinstance(fine, Plan)
    admitted = admit(fine, UNTRUSTED)
    assert isinstance(admitted, Plan)
    sandbox = admitted.jobs[0].sandbox
    assert (sandbox.memory_bytes, sandbox.cpus, admitted.jobs[0].timeout_seconds) == (GiB, 1.0, 300)


def test_the_worker_runs_what_was_admitted() -> None:
    """The sandbox request a worker builds from an admitted job carries the level's values, the log
    limit included (the worker's own defaults apply only to jobs stored before the policy)."""
    from worker.jobs import JobDefaults, request_for

    level = Policy.from_env({"SANDPIT_POLICY_UNTRUSTED_DEFAULT_LOG": "1M",
                             "SANDPIT_POLICY_UNTRUSTED_DEFAULT_PIDS": "99",
                             "SANDPIT_POLICY_UNTRUSTED_DEFAULT_TIMEOUT": "90s"}).untrusted
    limits = request_for(fill_defaults(job(), level), defaults=JobDefaults()).limits
    assert (limits.log_bytes, limits.pids, limits.timeout_s, limits.memory_bytes) == (1024**2, 99, 90.0, 2 * GiB)


def test_api_settings_carry_the_policy_and_refuse_a_bad_one() -> None:
    """The API builds its policy from the same mapping as its other settings; a bad entry is a
    start-up SettingsError naming it (``python -m api`` prints it and exits 2)."""
    from api.settings import ApiSettings, SettingsError

    settings = ApiSettings.from_env({"SANDPIT_POLICY_UNTRUSTED_RUNS": "7"})
    assert settings.policy.untrusted.max_runs_in_flight == 7 and settings.policy.trusted.max_runs_in_flight == 500
    with pytest.raises(SettingsError, match="SANDPIT_POLICY_TRUSTED_EGRES is not a policy setting"):
        ApiSettings.from_env({"SANDPIT_POLICY_TRUSTED_EGRES": "1"})
