"""`sandpit up`, then `submit --follow`, `logs` and `cancel` against it, as a user would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require_root, require_tools
from tests.integration.redis_server import free_port
from tests.sandbox.conftest import TEST_RUN, TEST_STATE

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture()
def running_service(tmp_path: Path):
    require_root()
    require_tools("redis-server")
    port = free_port()
    env = {"PATH": os.environ["PATH"], "SANDPIT_STATE_DIR": str(TEST_STATE), "SANDPIT_RUN_DIR": str(TEST_RUN),
           "SANDPIT_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", "SANDPIT_LEASE_S": "30"}
    up = subprocess.Popen([sys.executable, "-m", "worker", "up", "--port", str(port)], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    token = ""
    assert up.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = up.stdout.readline()
        if line.strip().startswith("token:"):
            token = line.split(":", 1)[1].strip()
            break
        assert line, "sandpit up exited"
    assert token
    client_env = {**env, "SANDPIT_API_URL": f"http://127.0.0.1:{port}", "SANDPIT_TOKEN": token}
    try:
        yield client_env, port
    finally:
        up.send_signal(signal.SIGINT)
        up.communicate(timeout=60)


def sandpit(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_up_submit_follow_logs_and_cancel(running_service, tmp_path):
    env, _port = running_service
    pipeline = tmp_path / "p.yml"
    pipeline.write_text("stages: [a, b]\nhello:\n  stage: a\n  script: ['echo hello from the service']\n"
                        "after:\n  stage: b\n  script: ['echo second']\n")
    p = sandpit(env, "submit", str(pipeline), "--follow")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "hello | hello from the service" in p.stdout and "pipeline succeeded" in p.stdout
    job_id = next(line.split()[0] for line in p.stdout.splitlines() if line.strip().endswith(" hello"))
    logs = sandpit(env, "logs", job_id)
    assert "hello from the service" in logs.stdout

    pipeline.write_text("long:\n  script: ['sleep 60']\n")
    p = sandpit(env, "submit", str(pipeline))
    run_id = p.stdout.split()[1].rstrip(":")
    time.sleep(1.0)
    c = sandpit(env, "cancel", run_id)
    assert c.returncode == 0 and "cancelled" in c.stdout
    bad = sandpit({**env, "SANDPIT_TOKEN": "wrong"}, "cancel", run_id)
    assert bad.returncode != 0 and "401" in bad.stderr


def test_up_stops_everything_it_started(tmp_path):
    require_root()
    require_tools("redis-server")
    port = free_port()
    env = {"PATH": os.environ["PATH"], "SANDPIT_STATE_DIR": str(TEST_STATE), "SANDPIT_RUN_DIR": str(TEST_RUN),
           "SANDPIT_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    up = subprocess.Popen([sys.executable, "-m", "worker", "up", "--port", str(port)], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert up.stdout is not None
    while "Ctrl-C" not in (line := up.stdout.readline()):
        assert line
    children = subprocess.run(["pgrep", "-P", str(up.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 3  # redis-server, worker, API
    up.send_signal(signal.SIGINT)
    up.communicate(timeout=60)
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        pass


def _children(pid: int) -> dict[str, int]:
    """The children of ``sandpit up`` by role (from their command lines)."""
    found = {}
    for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"redis-server" in cmdline[0]:
            found["redis"] = int(child)
        elif b"api" in cmdline:
            found["api"] = int(child)
        elif b"worker" in cmdline:
            found["worker"] = int(child)
    return found


def test_up_starts_a_dead_child_again(tmp_path):
    """SIGKILL the worker, then Redis, then the API of `sandpit up`: each is started again (with
    back-off), `up` itself keeps running, and a pipeline submitted afterwards succeeds."""
    require_root()
    require_tools("redis-server")
    port = free_port()
    env = {"PATH": os.environ["PATH"], "SANDPIT_STATE_DIR": str(TEST_STATE), "SANDPIT_RUN_DIR": str(TEST_RUN),
           "SANDPIT_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", "SANDPIT_LEASE_S": "5"}
    up = subprocess.Popen([sys.executable, "-m", "worker", "up", "--port", str(port)], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert up.stdout is not None
        token = ""
        while "Ctrl-C" not in (line := up.stdout.readline()):
            assert line, "sandpit up exited"
            if line.strip().startswith("token:"):
                token = line.split(":", 1)[1].strip()
        for role in ("worker", "redis", "api"):
            before = _children(up.pid)
            os.kill(before[role], signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                now = _children(up.pid)
                if role in now and now[role] != before[role]:
                    break
                time.sleep(0.2)
            else:
                raise AssertionError(f"{role} was not started again: {_children(up.pid)}")
            assert up.poll() is None
        client_env = {**env, "SANDPIT_API_URL": f"http://127.0.0.1:{port}", "SANDPIT_TOKEN": token}
        pipeline = tmp_path / "p.yml"
        pipeline.write_text("hello:\n  script: ['echo after the restarts']\n")
        deadline = time.monotonic() + 30
        while True:  # the API may still be coming up
            p = sandpit(client_env, "submit", str(pipeline), "--follow")
            if p.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "after the restarts" in p.stdout and "pipeline succeeded" in p.stdout
    finally:
        up.send_signal(signal.SIGINT)
        _out, err = up.communicate(timeout=60)
    assert "exited with status" in err and "starting it again" in err


def test_follow_filters_job_bytes_like_sandpit_run(running_service, tmp_path):
    """`submit --follow` prints job output through sandpit run's filter: colour kept, an OSC title,
    a screen clear and a CR that would overwrite the prefix are gone."""
    env, _port = running_service
    pipeline = tmp_path / "p.yml"
    pipeline.write_text("evil:\n  script:\n    - |\n      printf '\\033]0;owned\\007\\033[2J\\033[31mred\\033[0m"
                        "\\rsandpit: forged\\n'\n")
    p = sandpit(env, "submit", str(pipeline), "--follow")
    assert p.returncode == 0, p.stdout + p.stderr
    line = next(x for x in p.stdout.splitlines() if "forged" in x and "printf" not in x)
    assert line.startswith("evil | ") and "\033]" not in p.stdout and "\033[2J" not in p.stdout and "\r" not in line
