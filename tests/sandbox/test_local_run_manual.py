"""`sandpit run` never leaves a job silently unrun: manual jobs wait and say so, `--manual` runs them."""

from __future__ import annotations

import json
from pathlib import Path

from tests.sandbox.test_local_run import sandpit_run  # noqa: F401 - the fixture

PIPELINE = """
stages: [a, b]
deploy:
  stage: a
  script: [echo deploying]
  when: manual
  allow_failure: false
after:
  stage: b
  script: [echo after]
"""


def test_blocking_manual_job_waits_and_every_unrun_job_says_why(sandpit_run, tmp_path: Path) -> None:  # noqa: F811
    """Without --manual the manual job and what waits for it are not run, each with a reason."""
    (tmp_path / ".gitlab-ci.yml").write_text(PIPELINE)
    p = sandpit_run(str(tmp_path / ".gitlab-ci.yml"), "--json", cwd=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    jobs = {j["name"]: j for j in json.loads(p.stdout)["jobs"]}
    assert "--manual deploy" in jobs["deploy"]["message"]
    assert "waits for deploy (manual)" in jobs["after"]["message"]
    assert "after | ── not run: it waits for deploy (manual)" in p.stderr


def test_manual_flag_runs_the_named_job_and_what_follows(sandpit_run, tmp_path: Path) -> None:  # noqa: F811
    """`--manual deploy` (or `--manual '*'`) plays the job, then the pipeline goes on."""
    (tmp_path / ".gitlab-ci.yml").write_text(PIPELINE)
    for flag in ("deploy", "*"):
        p = sandpit_run(str(tmp_path / ".gitlab-ci.yml"), "--manual", flag, cwd=tmp_path)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "deploy | deploying" in p.stdout and "after | after" in p.stdout
