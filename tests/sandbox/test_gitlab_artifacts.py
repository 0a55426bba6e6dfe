"""artifacts:exclude and artifacts:when, as GitLab documents them, through real `sandpit run` jobs."""

from __future__ import annotations

import json
from pathlib import Path

from tests.sandbox.test_local_run import sandpit_run  # noqa: F401 - the fixture

PIPELINE = """
stages: [build, use]
ok:
  stage: build
  script:
    - mkdir -p $CI_PROJECT_DIR/dist/cache && echo app > dist/app.bin && echo tmp > dist/x.tmp
    - echo junk > dist/cache/big
  artifacts:
    paths: [$CI_PROJECT_DIR/dist/]
    exclude: [dist/*.tmp, dist/cache/]
broken-default:
  stage: build
  allow_failure: true
  script: [mkdir -p out, echo partial > out/log.txt, exit 3]
  artifacts: {paths: [out/]}
broken-on-failure:
  stage: build
  allow_failure: true
  script: [mkdir -p fail, echo why > fail/report.txt, exit 3]
  artifacts: {paths: [fail/], when: on_failure}
fine-on-failure:
  stage: build
  script: [mkdir -p never, echo x > never/x]
  artifacts: {paths: [never/], when: on_failure}
use:
  stage: use
  script:
    - ls -R dist out fail never 2>&1 | sort
"""


def test_exclude_and_when(sandpit_run, tmp_path: Path) -> None:  # noqa: F811
    """Excluded files and folders are not kept; on_success (the default) keeps nothing of a failed
    job, on_failure keeps only a failed job's; what is not kept is not passed on."""
    (tmp_path / ".gitlab-ci.yml").write_text(PIPELINE)
    p = sandpit_run(str(tmp_path / ".gitlab-ci.yml"), "--json", cwd=tmp_path)
    jobs = {j["name"]: j for j in json.loads(p.stdout)["jobs"]}
    kept = {name: sorted(a["path"] for a in job["artifacts"]) for name, job in jobs.items()}
    assert kept["ok"] == ["dist/app.bin"], kept
    assert kept["broken-default"] == [] and kept["broken-on-failure"] == ["fail/report.txt"]
    assert kept["fine-on-failure"] == []
    listing = p.stderr
    assert "use | app.bin" in listing and "use | report.txt" in listing
    after = listing.split("use | $ ls")[-1]
    assert "x.tmp" not in after and "log.txt" not in after and "big" not in after
