"""``job_script`` and ``request_for``: from a planned job to what the sandbox runs (pure; the scripts
are also run here by the host's own sh and bash, so their behaviour, not only their text, is held)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipelines.language.model import Job, Loc, PipelineInputs, Plan
from pipelines.language.planner import plan
from worker.jobs import JobDefaults, MiB, job_script, request_for


def planned(yaml: str, name: str = "j") -> Job:
    result = plan({".gitlab-ci.yml": yaml}, PipelineInputs())
    assert isinstance(result, Plan), result
    return result.job(name)


def run_script(script: str, shell: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The script as the sandbox runs it (``shell -c script``), here on the host, in an empty folder."""
    return subprocess.run([shell, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=10,
                          env={"PATH": "/usr/bin:/bin"}, check=False)


SHELLS = ["/bin/sh", "/bin/bash"]  # Debian's dash and bash: both are on every host sandpit runs on


@pytest.mark.parametrize(("shell", "prologue"), [
    ("/bin/bash", "set -eo pipefail"), ("/usr/bin/bash", "set -eo pipefail"), ("/bin/sh", "set -e"),
    ("/bin/dash", "set -e")])
def test_the_prologue_follows_the_shell(shell: str, prologue: str) -> None:
    """bash gets errexit and pipefail (as GitLab Runner), any other shell errexit only."""
    assert job_script(planned("j:\n  script: [make]\n"), shell).splitlines()[0] == prologue


@pytest.mark.parametrize(("lines", "echoes"), [
    (["make"], ["$ make"]),
    (["echo 'it''s'"], ["$ echo 'it''s'"]),  # single quotes survive the echo's own quoting
    (["echo one\necho two"], ["$ echo one # collapsed multi-line command"]),
    (["a", "b"], ["$ a", "$ b"]),
])
def test_every_command_is_echoed_before_it_runs(lines: list[str], echoes: list[str], tmp_path: Path) -> None:
    """The script prints ``$ command`` (a multi-line command by its first line, with a note)."""
    job = Job(name="j", stage="test", loc=Loc("f", 1, 1), script=tuple(lines))
    script = job_script(job, "/bin/sh")
    for line in job.script:  # the job's commands become no-ops: only the echoes print
        script = script.replace(f"\n{line}\n", "\n:\n", 1)
    assert run_script(script, "/bin/sh", tmp_path).stdout.splitlines() == echoes


@pytest.mark.parametrize("shell", SHELLS)
def test_the_first_failing_command_ends_the_job_with_its_status(shell: str, tmp_path: Path) -> None:
    """errexit: nothing after a failing command runs, and the job's status is that command's."""
    done = run_script(job_script(planned("j:\n  script: ['echo a', 'exit 7', 'echo never']\n"), shell), shell,
                      tmp_path)
    assert done.returncode == 7 and "never" not in done.stdout.replace("$ echo never", "")
    assert "a\n" in done.stdout


def test_bash_fails_a_failing_pipeline_and_sh_does_not(tmp_path: Path) -> None:
    """``false | true`` fails the job under bash (pipefail), not under sh (as GitLab does)."""
    job = planned("j:\n  script: ['false | true']\n")
    assert run_script(job_script(job, "/bin/bash"), "/bin/bash", tmp_path).returncode == 1
    assert run_script(job_script(job, "/bin/sh"), "/bin/sh", tmp_path).returncode == 0


@pytest.mark.parametrize(("script", "status", "code"), [("true", "success", 0), ("exit 3", "failed", 3)])
@pytest.mark.parametrize("shell", SHELLS)
def test_after_script_runs_whatever_happened_and_never_changes_the_result(
        shell: str, script: str, status: str, code: int, tmp_path: Path) -> None:
    """after_script runs in its own shell with CI_JOB_STATUS; its failure is reported and ignored."""
    job = planned(f"j:\n  script: [{script!r}]\n  after_script: ['echo status=$CI_JOB_STATUS', 'exit 9']\n")
    done = run_script(job_script(job, shell), shell, tmp_path)
    assert done.returncode == code
    assert f"status={status}" in done.stdout and "Running after_script" in done.stdout
    assert "after_script failed (ignored)" in done.stdout


def test_an_empty_script_is_a_no_op_and_one_shell_without_after_script() -> None:
    """Without after_script the script is one shell (no extra fork on the hot path)."""
    script = job_script(planned("j:\n  script: [make]\n"), "/bin/sh")
    assert "__sandpit_rc" not in script and "(" not in script
    assert job_script(Job(name="j", stage="s", loc=Loc("f", 1, 1)), "/bin/sh") == "set -e\n:\n"


DEFAULTS = JobDefaults()


@pytest.mark.parametrize(("yaml", "field", "expected"), [
    ("j:\n  script: [x]\n", "memory_bytes", DEFAULTS.memory_bytes),
    ("j:\n  script: [x]\n  sandbox: {memory: 512M}\n", "memory_bytes", 512 * MiB),
    ("j:\n  script: [x]\n", "cpus", DEFAULTS.cpus),
    ("j:\n  script: [x]\n  sandbox: {cpus: 1.5}\n", "cpus", 1.5),
    ("j:\n  script: [x]\n  sandbox: {pids: 64}\n", "pids", 64),
    ("j:\n  script: [x]\n  sandbox: {disk: 1G}\n", "disk_bytes", 1024 * MiB),
    ("j:\n  script: [x]\n", "timeout_s", DEFAULTS.timeout_s),
    ("j:\n  script: [x]\n  timeout: 10m\n", "timeout_s", 600.0),
    ("j:\n  script: [x]\n", "log_bytes", DEFAULTS.log_bytes),
])
def test_limits_come_from_the_job_else_the_defaults(yaml: str, field: str, expected: float) -> None:
    """Each limit the job's ``sandbox:`` (or ``timeout:``) sets wins; the rest are the defaults."""
    assert getattr(request_for(planned(yaml)).limits, field) == expected


@pytest.mark.parametrize(("yaml", "field", "expected"), [
    ("j:\n  script: [x]\n", "network", "none"),
    ("j:\n  script: [x]\n  sandbox: {network: egress}\n", "network", "egress"),
    ("j:\n  script: [x]\n", "profile", "default"),
    ("j:\n  script: [x]\n  sandbox: {profile: strict}\n", "profile", "strict"),
    ("j:\n  script: [x]\n", "runtime", None),
    ("j:\n  script: [x]\n  sandbox: {runtime: runc}\n", "runtime", "runc"),
    ("j:\n  script: [x]\n", "image", "debian"),
    ("j:\n  image: python:3.12\n  script: [x]\n", "image", "python:3.12"),
    ("j:\n  script: [x]\n", "artifacts", ()),
    ("j:\n  script: [x]\n  artifacts: {paths: [dist/, out.txt], exclude: [dist/*.o]}\n", "artifacts",
     ("dist/", "out.txt")),
    ("j:\n  script: [x]\n  artifacts: {paths: [dist/], exclude: [dist/*.o]}\n", "artifact_exclude", ("dist/*.o",)),
    ("j:\n  script: [x]\n", "artifacts_when", "on_success"),
    ("j:\n  script: [x]\n  artifacts: {paths: [d], when: always}\n", "artifacts_when", "always"),
])
def test_the_request_carries_the_jobs_choices(yaml: str, field: str, expected: object) -> None:
    """Network, profile, runtime, image and artifact rules go from the job into the request as written."""
    assert getattr(request_for(planned(yaml)), field) == expected


def test_argv_env_and_the_default_image() -> None:
    """argv is ``shell -c script``; the job's variables come first, then what the worker adds."""
    job = planned("variables: {A: '1'}\nj:\n  variables: {B: two}\n  script: [make]\n")
    bash = "/bin/bash"  # the shell the job's script is written for (request_for starts no process)
    req = request_for(job, defaults=JobDefaults(image="alpine"), extra_env=(("CI_JOB_ID", "j1"),), shell=bash)
    assert req.argv == ("/bin/bash", "-c", job_script(job, "/bin/bash"))
    assert req.image == "alpine"
    names = [k for k, _v in req.env]
    assert names[-1] == "CI_JOB_ID" and {"A", "B"} <= set(names[:-1])
    assert ("B", "two") in req.env
