"""The job's shell and its predefined variables, inside real jobs run by `sandpit run`.

The predefined-variable table of docs/pipeline-language.md is the contract: every row is read inside
a job here, and a row whose value is documented as never empty must not be empty."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.sandbox.test_local_run import REPO, git_repo, sandpit_run  # noqa: F401 - the fixture

DOC = REPO / "docs" / "pipeline-language.md"
# set only in some pipelines or in after_script: checked on their own below
CONDITIONAL = {"CI_COMMIT_TAG", "CI_NODE_INDEX", "CI_JOB_STATUS"}


def conditional(name: str) -> bool:
    """Set only in some pipelines (tags, merge requests, parallel jobs) or in after_script."""
    return name in CONDITIONAL or name.startswith("CI_MERGE_REQUEST_")


def documented_variables() -> list[str]:
    text = DOC.read_text()
    table = text.split("### Predefined variables", 1)[1].split("\n\n", 2)[1]
    return re.findall(r"^\| `([A-Z_]+)` \|", table, re.M)


def test_every_documented_variable_is_set_in_a_job(sandpit_run, tmp_path: Path) -> None:  # noqa: F811
    """Each row of the docs' table is present in a job with a value (empty only where the docs say)."""
    names = documented_variables()
    assert len(names) > 30
    script = "\n".join(f'    - echo "VAR {name}=${{{name}-<unset>}}"' for name in names)
    git_repo(tmp_path, {".gitlab-ci.yml": f"look:\n  script:\n{script}\n", "tracked.txt": "t",
                        ".gitignore": ""})
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.email=dev@example.invalid", "-c", "user.name=Dev",
                    "commit", "-q", "--allow-empty", "-m", "Add the thing\n\nWith a body."], check=True)
    p = sandpit_run(str(tmp_path / ".gitlab-ci.yml"), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    seen = dict(re.findall(r"look \| VAR ([A-Z_]+)=(.*)$", p.stdout, re.M))
    missing = [n for n in names if not conditional(n) and seen.get(n) in (None, "", "<unset>")]
    assert missing == [], missing
    assert seen["GITLAB_CI"] == "true" and seen["CI_SERVER"] == "yes"
    assert seen["CI_COMMIT_TITLE"] == "Add the thing" and seen["CI_COMMIT_DESCRIPTION"] == "With a body."
    assert seen["CI_COMMIT_AUTHOR"] == "Dev <dev@example.invalid>"
    assert seen["CI_PROJECT_NAMESPACE"] == "local" and seen["CI_PROJECT_PATH"] == f"local/{tmp_path.name}"
    assert seen["CI_COMMIT_BEFORE_SHA"] == "0" * 40 and seen["CI_BUILDS_DIR"] == "/"
    assert seen["CI_CONCURRENT_ID"].isdigit()


def test_scripts_run_under_bash_with_pipefail_and_after_script_sees_the_status(
        sandpit_run, tmp_path: Path) -> None:  # noqa: F811
    """The image has bash, so bash runs the script (GitLab Runner's choice): `[[ ]]`, arrays and brace
    expansion work, `false | true` fails the job, and after_script sees CI_JOB_STATUS."""
    (tmp_path / ".gitlab-ci.yml").write_text("""
stages: [a, b]
bashisms:
  stage: a
  script:
    - '[[ "abc" == a* ]] && echo "double brackets ok"'
    - 'arr=(x y z); echo "array ${#arr[@]}"'
    - 'echo brace {1..3}'
    - 'echo "shell $BASH_VERSION" | cut -c1-7'
  after_script:
    - 'echo "status $CI_JOB_STATUS"'
pipe:
  stage: b
  needs: []
  script:
    - 'false | true'
    - 'echo not reached'
  after_script:
    - 'echo "status $CI_JOB_STATUS"'
""")
    p = sandpit_run(str(tmp_path / ".gitlab-ci.yml"), cwd=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    out = p.stdout
    assert "bashisms | double brackets ok" in out and "bashisms | array 3" in out
    assert "bashisms | brace 1 2 3" in out and "bashisms | shell 5" in out
    assert "bashisms | status success" in out
    assert "pipe | not reached" not in out and "pipe | status failed" in out
