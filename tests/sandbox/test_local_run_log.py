"""`sandpit run` output as a CI job log, through the real process: a header and a result line per
job (and per attempt), GitLab's sections, unglued command echoes, allowed failures, skip reasons,
the summary table; `--job`, `--source`, `--ref`, `--tag`; colour only on a terminal, `-t`."""

from __future__ import annotations

import re
import sys

from tests.sandbox.hostile.test_output_injection import SANDPIT, run_on_pty, screen_of
from tests.sandbox.test_cli_and_teardown import cli_env
from tests.sandbox.test_local_run import sandpit_run  # noqa: F401 - the fixture

LOG_PIPELINE = r"""stages: [a, b, c]
build:
  stage: a
  script:
    - 'printf "{\"python\": \"3.11.2\"}"'
    - printf 'section_start:1700000000:deps[collapsed=true]\r\033[0KInstalling deps\n'
    - echo installing
    - printf 'section_end:1700000001:deps\r\033[0K\n'
    - 'printf "no newline at the end"'
flaky:
  stage: a
  script: [exit 3]
  allow_failure: true
retried:
  stage: a
  retry: 1
  script: [exit 4]
never:
  stage: b
  script: [echo no]
cleanup:
  stage: c
  when: on_failure
  script: [echo cleaning]
"""


def lines_of(text: str, job: str) -> list[str]:
    return [line.split(" | ", 1)[1] for line in text.splitlines() if line.strip().startswith(f"{job} | ")]


def test_a_run_reads_like_a_ci_job_log(sandpit_run, tmp_path):  # noqa: F811
    (tmp_path / "p.yml").write_text(LOG_PIPELINE)
    p = sandpit_run(str(tmp_path / "p.yml"), cwd=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    out = p.stdout
    assert "\x1b" not in out  # not a terminal: no colour
    build = lines_of(out, "build")
    header = build[0]
    assert header.startswith("── job build: image debian, runtime crun, shell /")
    for part in ("memory 2G", "cpus 1", "pids 1024", "disk 4G", "timeout 1h", "network none"):
        assert part in header, part
    # the output without a newline does not glue to the next echo, nor to sandpit's result line
    at = build.index('{"python": "3.11.2"}')
    assert build[at + 1].startswith("$ printf 'section_start")
    assert "┌ Installing deps" in build and "installing" in build
    assert any(re.fullmatch(r"└ Installing deps \(\d+\.\d\ds\)", line) for line in build), build
    assert not any("section_" in line and not line.startswith("$ ") for line in build)
    assert build[-2:-1] == ["no newline at the end"]
    assert re.fullmatch(r"── succeeded in \d+\.\d\ds", build[-1])

    assert re.fullmatch(r"── failed \(allowed to fail\) in \d+\.\d\ds, exit code 3", lines_of(out, "flaky")[-1])
    retried = lines_of(out, "retried")
    assert [line.split(":")[0] for line in retried if line.startswith("── job")] == [
        "── job retried, attempt 1 of 2", "── job retried, attempt 2 of 2"]
    assert any(re.fullmatch(r"── failed in \d+\.\d\ds, exit code 4; retrying \(attempt 2 of 2\)", x) for x in retried)
    assert re.fullmatch(r"── failed in \d+\.\d\ds, exit code 4", retried[-1])
    assert lines_of(out, "never") == ["── skipped: a job it waits for did not succeed: retried (failed)"]
    assert "cleaning" in lines_of(out, "cleanup")

    table = out[out.index("\n\n  JOB") + 2:].splitlines()
    assert table[0].split() == ["JOB", "STATUS", "REASON", "EXIT", "DURATION", "ATTEMPTS"]
    rows = {row.split()[0]: row for row in table[1:-1]}
    assert re.fullmatch(r"build +succeeded +- +0 +\d+\.\d\ds +1", rows["build"].strip())
    assert re.fullmatch(r"flaky +failed \(allowed to fail\) +exit_code +3 +\d+\.\d\ds +1", rows["flaky"].strip())
    assert re.fullmatch(r"retried +failed +exit_code +4 +\d+\.\d\ds +2", rows["retried"].strip())
    assert re.fullmatch(r"never +skipped +dependency_failed +- +- +-", rows["never"].strip())
    assert table[-1] == "pipeline failed"


JOBS_PIPELINE = """stages: [a, b, c]
lint:
  stage: a
  script: [echo linting]
build:
  stage: a
  script: [echo building]
test:
  stage: b
  needs: [build]
  script: [echo testing]
mr-only:
  stage: b
  needs: []
  rules:
    - if: $CI_PIPELINE_SOURCE == "merge_request_event"
  script: [echo "mr $CI_PIPELINE_SOURCE"]
release:
  stage: c
  needs: []
  rules:
    - if: $CI_COMMIT_TAG
  script: [echo "tag $CI_COMMIT_TAG ref $CI_COMMIT_REF_NAME"]
"""


def test_job_runs_the_job_and_what_it_needs_only(sandpit_run, tmp_path):  # noqa: F811
    (tmp_path / "p.yml").write_text(JOBS_PIPELINE)
    p = sandpit_run(str(tmp_path / "p.yml"), "--job", "test", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "test | testing" in p.stdout and "build | building" in p.stdout
    assert "linting" not in p.stdout and "lint |" not in p.stdout
    unknown = sandpit_run(str(tmp_path / "p.yml"), "--job", "nope", cwd=tmp_path)
    assert unknown.returncode == 2 and "no job nope" in unknown.stderr and "Traceback" not in unknown.stderr


def test_source_ref_and_tag_simulate_other_pipelines(sandpit_run, tmp_path):  # noqa: F811
    (tmp_path / "p.yml").write_text(JOBS_PIPELINE)
    push = sandpit_run(str(tmp_path / "p.yml"), cwd=tmp_path)
    assert push.returncode == 0 and "mr-only |" not in push.stdout and "release |" not in push.stdout
    mr = sandpit_run(str(tmp_path / "p.yml"), "--source", "merge_request_event", "--job", "mr-only", cwd=tmp_path)
    assert mr.returncode == 0, mr.stdout + mr.stderr
    assert "mr-only | mr merge_request_event" in mr.stdout
    tag = sandpit_run("-v", str(tmp_path / "p.yml"), "--tag", "--ref", "v1.2", "--job", "release", cwd=tmp_path)
    assert tag.returncode == 0, tag.stdout + tag.stderr
    assert "release | tag v1.2 ref v1.2" in tag.stdout
    assert "sandpit: planned 1 job(s)" in tag.stderr and "alembic" not in tag.stderr.lower()


COLOUR_PIPELINE = """hello:
  script:
    - printf '\\033[31mred\\033[0m\\n'
"""


def test_colour_only_on_a_terminal_and_timestamps(settings, tmp_path, no_leftovers):
    (tmp_path / "p.yml").write_text(COLOUR_PIPELINE)
    env = cli_env(settings, "crun")
    raw, code = run_on_pty([SANDPIT, "run", str(tmp_path / "p.yml")], env, tmp_path)
    assert code == 0, raw.decode(errors="replace")
    screen = screen_of(raw)
    row = next(y for y, line in enumerate(screen.display) if "── succeeded" in line)
    x = screen.display[row].index("── succeeded")
    assert screen.buffer[row][x].fg == "green"
    red = next(y for y, line in enumerate(screen.display) if line.rstrip().endswith("| red"))
    assert screen.buffer[red][screen.display[red].index("red")].fg == "red"

    for extra_env, flags in (({"NO_COLOR": "1"}, []), ({}, ["--color=never"])):
        raw, code = run_on_pty([SANDPIT, "run", str(tmp_path / "p.yml"), *flags], {**env, **extra_env}, tmp_path)
        assert code == 0 and b"\x1b[" not in raw, raw[:400]
        assert b"hello | red" in raw

    raw, code = run_on_pty([SANDPIT, "run", "-t", "--color", "never", str(tmp_path / "p.yml")], env, tmp_path)
    job_lines = [line for line in raw.decode().splitlines() if " | " in line]
    assert job_lines and all(re.match(r"\d\d:\d\d:\d\d\.\d{3} +hello \| ", line) for line in job_lines), job_lines

    # piped, --color=always still colours (a CI log viewer that renders SGR)
    import subprocess

    p = subprocess.run([sys.executable, "-m", "worker", "run", "--color=always", str(tmp_path / "p.yml")], env=env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "\x1b[32m── succeeded\x1b[0m" in p.stdout
