"""What ``sandpit run`` keeps between and after runs, through the real ``sandpit`` process: ``cache:``
across invocations of the same repository, JUnit reports in the summary and the record, and
``sandpit artifacts`` copying kept files out without following a symlink."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sandbox.test_cli_and_teardown import cli_env
from worker.local.cache import repository_dir

CACHE_PIPELINE = """\
build:
  cache:
    key: deps-v1
    paths: [deps/]
  script:
    - cat deps/stamp 2>/dev/null || echo "no cache"
    - mkdir -p deps && echo "stamp from $RUN" > deps/stamp
lockfile:
  cache:
    key: {files: [lock.txt], prefix: locked}
    paths: [vendor/]
  script:
    - cat vendor/stamp 2>/dev/null || echo "no vendor cache"
    - mkdir -p vendor && echo "vendor from $RUN" > vendor/stamp
reader:
  cache:
    key: deps-v1
    paths: [deps/]
    policy: pull
  script:
    - cat deps/stamp 2>/dev/null || echo "reader saw nothing"
    - mkdir -p deps && echo "changed by reader" > deps/stamp
"""


@pytest.fixture()
def run_in(settings, no_leftovers):
    """``sandpit run`` of a repository's pipeline; the repository's cache index is removed after."""
    made: list[Path] = []

    def call(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
        made.append(repository_dir(settings.state_dir, repo))
        return subprocess.run([sys.executable, "-m", "worker", "run", str(repo / ".gitlab-ci.yml"), *args],
                              env=cli_env(settings, "crun"), capture_output=True, text=True, timeout=300, cwd=repo)

    yield call
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


def repo(root: Path, pipeline: str, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / ".gitlab-ci.yml").write_text(pipeline)
    for name, text in (files or {}).items():
        (root / name).write_text(text)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def lines_of(p: subprocess.CompletedProcess[str], job: str) -> list[str]:
    prefix = f"{job} | "
    return [line.split(" | ", 1)[1] for line in p.stdout.splitlines() if line.strip().startswith(prefix.strip())
            and " | " in line]


def test_cache_persists_between_runs_of_the_same_repository(run_in, tmp_path):
    """The second run restores what the first saved (key), a pull-only job never writes it back,
    a key:files key changes with the file, and another repository or trust level sees nothing."""
    project = repo(tmp_path / "project", CACHE_PIPELINE, {"lock.txt": "v1\n"})
    first = run_in(project, "--var", "RUN=one")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "no cache" in lines_of(first, "build") and "no vendor cache" in lines_of(first, "lockfile")

    second = run_in(project, "--var", "RUN=two")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "stamp from one" in lines_of(second, "build")
    assert "vendor from one" in lines_of(second, "lockfile")
    # the pull-only reader got the cache (one run's build, or the other's: they run side by side) and
    # its change was never saved
    assert any(line.startswith("stamp from") for line in lines_of(second, "reader"))

    (project / "lock.txt").write_text("v2\n")
    third = run_in(project, "--var", "RUN=three")
    assert "no vendor cache" in lines_of(third, "lockfile")  # a new lock file, a new key
    assert "stamp from two" in lines_of(third, "build")
    assert "changed by reader" not in lines_of(third, "build") + lines_of(third, "reader")

    untrusted = run_in(project, "--var", "RUN=four", "--policy", "untrusted", "--job", "build")
    assert "no cache" in lines_of(untrusted, "build")  # trusted runs' caches never feed untrusted ones

    other = repo(tmp_path / "other", CACHE_PIPELINE, {"lock.txt": "v1\n"})
    elsewhere = run_in(other, "--var", "RUN=five", "--job", "build")
    assert "no cache" in lines_of(elsewhere, "build")


JUNIT_PIPELINE = """\
test:
  script:
    - mkdir -p out
    - printf '%s' "$REPORT" > out/report.xml
    - exit 1
  artifacts:
    paths: [dist/]
    reports:
      junit: out/report.xml
hostile:
  script:
    - mkdir -p out
    - printf '%s' "$EVIL" > out/evil.xml
  artifacts:
    reports:
      junit: out/*.xml
"""

REPORT = ('<testsuite><testcase classname="app.tests" name="test_ok"/>'
          '<testcase classname="app.tests" name="test_sum"><failure message="assert 3 == 4&#10;second line">tb'
          '</failure></testcase><testcase name="test_db"><error message="no database">tb</error></testcase>'
          '<testcase name="test_later"><skipped/></testcase></testsuite>')
EVIL = ('<?xml version="1.0"?><!DOCTYPE t [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
        '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY x SYSTEM "file:///etc/shadow">]>'
        '<testsuite><testcase name="z"><failure message="&c;&x;"/></testcase></testsuite>')


def test_junit_reports_are_kept_parsed_and_shown_even_for_a_failed_job(run_in, tmp_path, settings):
    """A failing job's report (not in `paths`) is kept and summarised: counts and the failed tests'
    names and first message lines after the summary and in the record; a report with a DTD and
    entities is refused without expanding anything."""
    project = repo(tmp_path / "p", JUNIT_PIPELINE)
    p = run_in(project, "--json", "--var", f"REPORT={REPORT}", "--var", f"EVIL={EVIL}")
    assert p.returncode == 1
    record = json.loads(p.stdout)
    jobs = {j["name"]: j for j in record["jobs"]}
    tests = jobs["test"]["tests"]
    assert (tests["tests"], tests["passed"], tests["failed"], tests["errored"], tests["skipped"]) == (4, 1, 1, 1, 1)
    assert [(f["name"], f["kind"], f["message"]) for f in tests["failures"]] == [
        ("app.tests.test_sum", "failed", "assert 3 == 4\nsecond line"), ("test_db", "errored", "no database")]
    assert [a["path"] for a in jobs["test"]["artifacts"]] == ["out/report.xml"]
    evil = jobs["hostile"]["tests"]
    assert evil["tests"] == 0 and "declares a DTD or entities" in evil["problems"][0]
    assert "aaaaaaaa" not in p.stdout + p.stderr and "root:" not in p.stdout + p.stderr
    after = p.stderr[p.stderr.index("pipeline failed"):]  # --json: the summary and what follows are on stderr
    assert "4 tests: 1 passed, 1 failed, 1 errored, 1 skipped (out/report.xml)" in after
    assert "failed 'app.tests.test_sum': assert 3 == 4" in after or "failed app.tests.test_sum: assert 3 == 4" in after
    assert "errored test_db: no database" in after
    assert f"sandpit artifacts {jobs['test']['id']}" in after


def sandpit(settings, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", *args], env=cli_env(settings, "crun"),
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def test_artifacts_are_copied_out_without_following_symlinks(run_in, tmp_path, settings):
    """`sandpit artifacts RUN -o DIR` writes every job's files under their paths from the store;
    it never replaces a file without --force, never writes through a symlink on the way (refusing
    before writing anything), and --force replaces a symlink itself, not its target."""
    project = repo(tmp_path / "p", "build:\n  script:\n    - mkdir -p dist/sub && echo app > dist/app.txt\n"
                                   "    - echo deep > dist/sub/deep.txt\n  artifacts: {paths: [dist/]}\n"
                                   "docs:\n  script: [mkdir -p site, echo page > site/index.html]\n"
                                   "  artifacts: {paths: [site/]}\n")
    p = run_in(project, "--json")
    assert p.returncode == 0, p.stderr
    record = json.loads(p.stdout)
    assert f"sandpit artifacts {record['id']}" in p.stderr

    out = tmp_path / "out"
    got = sandpit(settings, "artifacts", record["id"], "-o", str(out))
    assert got.returncode == 0, got.stderr
    assert (out / "dist/app.txt").read_text() == "app\n" and (out / "dist/sub/deep.txt").read_text() == "deep\n"
    assert (out / "site/index.html").read_text() == "page\n"

    again = sandpit(settings, "artifacts", record["id"], "-o", str(out))
    assert again.returncode == 1 and "exists (use --force to replace it)" in again.stderr

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "deep.txt").write_text("host file\n")
    trap = tmp_path / "trap"
    (trap / "dist").mkdir(parents=True)
    (trap / "dist" / "sub").symlink_to(victim)
    (trap / "site").symlink_to(victim)
    refused = sandpit(settings, "artifacts", record["id"], "-o", str(trap), "--force")
    assert refused.returncode == 1 and "a symlink is on the way (not followed)" in refused.stderr
    assert (victim / "deep.txt").read_text() == "host file\n" and sorted(os.listdir(victim)) == ["deep.txt"]
    assert not (trap / "dist" / "app.txt").exists()  # refused before anything was written

    leaf = tmp_path / "leaf"
    (leaf / "dist").mkdir(parents=True)
    (leaf / "dist" / "app.txt").symlink_to(victim / "deep.txt")
    forced = sandpit(settings, "artifacts", next(j["id"] for j in record["jobs"] if j["name"] == "build"),
                     "-o", str(leaf), "--force")
    assert forced.returncode == 0, forced.stderr
    assert not (leaf / "dist" / "app.txt").is_symlink() and (leaf / "dist" / "app.txt").read_text() == "app\n"
    assert (victim / "deep.txt").read_text() == "host file\n"

    unknown = sandpit(settings, "artifacts", "feedfacefeed", "-o", str(out))
    assert unknown.returncode == 1 and "no local run or job 'feedfacefeed'" in unknown.stderr


def test_artifacts_of_a_damaged_store_are_not_copied(run_in, tmp_path, settings):
    """A stored file whose bytes no longer match its sha256 is refused, and nothing is written."""
    project = repo(tmp_path / "p", "build:\n  script: ['mkdir -p dist', 'head -c 5000 /dev/urandom > dist/r']\n"
                                   "  artifacts: {paths: [dist/]}\n")
    p = run_in(project, "--json")
    (art,) = json.loads(p.stdout)["jobs"][0]["artifacts"]
    stored = settings.state_dir / "artifacts" / art["sha256"][:2] / art["sha256"]
    data = stored.read_bytes()
    try:
        stored.write_bytes(b"EVIL" + data[4:])
        got = sandpit(settings, "artifacts", json.loads(p.stdout)["id"], "-o", str(tmp_path / "out"))
        assert got.returncode == 1 and "does not match its sha256" in got.stderr
        assert not (tmp_path / "out" / "dist").exists()
    finally:
        stored.write_bytes(data)


def test_cache_when_follows_the_jobs_outcome(run_in, tmp_path):
    """`when: on_failure` saves the cache of a job that failed and not of one that succeeded."""
    pipeline = "".join(
        f"{name}:\n  cache: {{key: {name}-key, paths: [c/], when: on_failure}}\n  allow_failure: true\n"
        f"  script:\n    - cat c/stamp 2>/dev/null || echo 'no cache'\n"
        f"    - mkdir -p c && echo \"from $RUN\" > c/stamp\n"
        f"    - {check}\n"
        for name, check in (("fails", 'test "$RUN" != one'), ("passes", "echo passed")))
    project = repo(tmp_path / "p", pipeline)
    first = run_in(project, "--var", "RUN=one")
    assert "no cache" in lines_of(first, "fails") and "no cache" in lines_of(first, "passes"), first.stdout
    second = run_in(project, "--var", "RUN=two")
    assert "from one" in lines_of(second, "fails"), second.stdout
    assert "no cache" in lines_of(second, "passes"), second.stdout
