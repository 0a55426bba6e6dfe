"""``sandpit run``: whole pipelines on this machine, the repository in every job's workspace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sandbox.test_cli_and_teardown import cli_env

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def sandpit_run(settings, no_leftovers):
    def call(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "worker", "run", *args], env=cli_env(settings, "crun"),
                              capture_output=True, text=True, timeout=300, cwd=cwd or REPO)
    return call


def git_repo(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    subprocess.run(["git", "init", "-q", "-b", "feature/x", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", ".gitlab-ci.yml", "tracked.txt", ".gitignore"], check=True)
    subprocess.run(["git", "-C", str(root), "-c", "user.email=t@example.invalid", "-c", "user.name=t",
                    "commit", "-qm", "init"], check=True)


def test_example_pipeline_succeeds(sandpit_run):
    p = sandpit_run("pipelines/examples/demo.yml", "--json")
    assert p.returncode == 0, p.stderr
    record = json.loads(p.stdout)
    statuses = {j["name"]: j["status"] for j in record["jobs"]}
    assert statuses == {"build": "succeeded", "test: [units]": "succeeded", "test: [limits]": "succeeded",
                        "flaky-but-allowed": "failed", "report": "succeeded"}
    assert "report | suite units ok" in p.stderr


def test_workspace_holds_the_work_tree_but_not_ignored_files(sandpit_run, tmp_path):
    git_repo(tmp_path, {
        ".gitlab-ci.yml": "look:\n  script:\n    - ls -a | sort | tr '\\n' ' '\n"
                          "    - echo \"$CI_COMMIT_REF_NAME\"\n",
        "tracked.txt": "t", "untracked.txt": "u", "secret.env": "ignored", ".gitignore": "secret.env\n",
    })
    p = sandpit_run(str(tmp_path / ".gitlab-ci.yml"), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    listing = next(line for line in p.stdout.splitlines() if "tracked.txt" in line and "ls -a" not in line)
    assert "untracked.txt" in listing and ".gitlab-ci.yml" in listing
    assert "secret.env" not in listing and ".git " not in listing
    assert "look | feature/x" in p.stdout


def test_jobs_cannot_change_what_the_next_job_sees(sandpit_run, tmp_path):
    (tmp_path / ".gitlab-ci.yml").write_text(
        "stages: [a, b]\nfirst:\n  stage: a\n  script: ['rm -f data.txt', 'echo changed > other.txt']\n"
        "second:\n  stage: b\n  script: ['cat data.txt', 'test ! -e other.txt']\n")
    (tmp_path / "data.txt").write_text("original\n")
    p = sandpit_run(str(tmp_path / ".gitlab-ci.yml"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "second | original" in p.stdout


def test_failure_exit_status_and_skipped_dependents(sandpit_run, tmp_path):
    (tmp_path / "p.yml").write_text("stages: [a, b]\nbad:\n  stage: a\n  script: ['exit 7']\n"
                                    "never:\n  stage: b\n  script: ['echo no']\n")
    p = sandpit_run(str(tmp_path / "p.yml"), "--json")
    assert p.returncode == 1
    jobs = {j["name"]: j for j in json.loads(p.stdout)["jobs"]}
    assert (jobs["bad"]["status"], jobs["bad"]["exit_code"]) == ("failed", 7)
    assert (jobs["never"]["status"], jobs["never"]["reason"]) == ("skipped", "dependency_failed")


def test_invalid_pipeline_reports_every_problem_with_location(sandpit_run, tmp_path):
    (tmp_path / "p.yml").write_text("job:\n  scrpit: [x]\nother:\n  when: sometimes\n  script: [y]\n")
    p = sandpit_run(str(tmp_path / "p.yml"))
    assert p.returncode == 1
    assert "p.yml:2:3" in p.stderr and "p.yml:4:9" in p.stderr
    assert "Traceback" not in p.stderr


def test_unknown_image_fails_the_job_with_a_clear_message(sandpit_run, tmp_path):
    (tmp_path / "p.yml").write_text("job:\n  image: node:20\n  script: [node -v]\n")
    p = sandpit_run(str(tmp_path / "p.yml"), "--json")
    assert p.returncode == 1
    (job,) = json.loads(p.stdout)["jobs"]
    assert job["reason"] in ("invalid_spec", "infra_error") and "node" in (job.get("message") or "")
