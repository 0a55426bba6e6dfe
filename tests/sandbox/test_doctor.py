"""``sandpit doctor`` through the real process: every check named with its state, exit 1 exactly when
something a job needs is broken (no image, an unreachable broker or database), secrets never shown."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

from tests.sandbox.test_cli_and_teardown import cli_env

CHECKS = ("runtime crun", "runtime runc", "runtime runsc", "cgroups", "favordynmods", "job disk", "image debian",
          "bridge", "egress dns", "redis", "database")


def doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", "doctor"], env=env, capture_output=True, text=True,
                          timeout=120)


def states(p: subprocess.CompletedProcess[str]) -> dict[str, str]:
    found = {}
    for line in p.stdout.splitlines():
        match = re.match(r"^(\S.*?)\s{2,}(ok|warn|fail|skip)\s{2}", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_prepared_host_passes_every_check_a_job_needs(settings):
    p = doctor(cli_env(settings, "crun"))
    assert p.returncode == 0, p.stdout + p.stderr
    found = states(p)
    assert set(CHECKS) <= set(found), found
    assert found["runtime crun"] == "ok" and found["image debian"] == "ok" and found["job disk"] == "ok"
    assert "fail" not in found.values()
    assert p.stdout.rstrip().endswith("nothing a job needs is broken")


def test_unreachable_redis_and_database_fail_without_showing_the_password(settings):
    port = free_port()  # nothing listens there
    env = {**cli_env(settings, "crun"), "SANDPIT_REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0",
           "SANDPIT_DATABASE_URL": f"postgresql://sandpit:hunter2@127.0.0.1:{port}/sandpit"}
    p = doctor(env)
    assert p.returncode == 1
    found = states(p)
    assert found["redis"] == "fail" and found["database"] == "fail"
    assert "hunter2" not in p.stdout + p.stderr and "Traceback" not in p.stderr
    assert "2 problem(s) a job would hit: redis, database" in p.stdout


def test_a_reachable_database_passes(settings, tmp_path: Path):
    env = {**cli_env(settings, "crun"), "SANDPIT_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    assert states(doctor(env))["database"] == "ok"


def test_a_state_dir_without_images_or_job_disk_says_what_to_do(settings, tmp_path: Path):
    env = {**cli_env(settings, "crun"), "SANDPIT_STATE_DIR": str(tmp_path / "state"),
           "SANDPIT_RUN_DIR": str(tmp_path / "run")}
    p = doctor(env)
    assert p.returncode == 1
    found = states(p)
    assert found["images"] == "fail" and "sandpit images build debian" in p.stdout
    assert found["job disk"] == "warn" and "is not mounted yet" in p.stdout
    assert found["bridge"] == "skip"
