"""`sandpit up` as a user starts it: a `try:` line that works when pasted (it names this instance's
API and token), no Celery banner after it, and its own state: a second `up` with another state dir
on another port shares neither database nor token; a second one on the same state dir is refused."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import require_root, require_tools
from tests.integration.redis_server import free_port
from tests.sandbox.conftest import TEST_RUN

REPO = Path(__file__).resolve().parents[3]


class Up:
    """A running `sandpit up`: the lines it printed until "Ctrl-C", and the process."""

    def __init__(self, state: Path, port: int, log: Path) -> None:
        self.env = {"PATH": os.environ["PATH"], "SANDPIT_STATE_DIR": str(state), "SANDPIT_RUN_DIR": str(TEST_RUN),
                    "SANDPIT_SCRATCH_SIZE": "1G"}
        self.log = log
        self.out = log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "worker", "up", "--port", str(port)], env=self.env,
                                     cwd=REPO, stdout=self.out, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while "Ctrl-C stops everything." not in log.read_text():
            assert self.proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)

    def field(self, name: str) -> str:
        line = next(x for x in self.log.read_text().splitlines() if x.strip().startswith(f"{name}:"))
        return line.split(":", 1)[1].strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=60)
        self.out.close()


def _status(url: str, token: str) -> int:
    return httpx.get(f"{url}/api/v1/runs/no-such-run", headers={"Authorization": f"Bearer {token}"},
                     timeout=10).status_code


def test_two_ups_keep_their_own_state_and_print_a_working_try_line(tmp_path: Path) -> None:
    require_root()
    require_tools("redis-server")
    first_port, second_port = free_port(), free_port()
    first = Up(tmp_path / "one", first_port, tmp_path / "one.log")
    try:
        second = Up(tmp_path / "two", second_port, tmp_path / "two.log")
        try:
            time.sleep(3)  # what the worker child would print after the try line (its banner) has come by now
            for up, port in ((first, first_port), (second, second_port)):
                text = up.log.read_text()
                after = text[text.index("Ctrl-C stops everything."):]
                assert "celery@" not in text and "[config]" not in text and "[queues]" not in text, text
                assert after.strip() == "Ctrl-C stops everything.", after
                words = shlex.split(up.field("try"))
                assigned = dict(w.split("=", 1) for w in words[:2])
                assert assigned["SANDPIT_API_URL"] == f"http://127.0.0.1:{port}"
                assert assigned["SANDPIT_TOKEN"] == up.field("token")
                assert "submit" in words and Path(words[words.index("submit") + 1]).is_file()
                # the pasted line's environment reaches this instance and its token is accepted
                assert _status(assigned["SANDPIT_API_URL"], assigned["SANDPIT_TOKEN"]) == 404
            one_token, two_token = first.field("token"), second.field("token")
            assert one_token != two_token
            assert (tmp_path / "one" / "api-token").read_text().strip() == one_token
            assert (tmp_path / "two" / "api-token").read_text().strip() == two_token
            assert _status(f"http://127.0.0.1:{second_port}", one_token) == 401
            assert (tmp_path / "one" / "sandpit.db").exists() and (tmp_path / "two" / "sandpit.db").exists()

            again = subprocess.run([sys.executable, "-m", "worker", "up", "--port", str(free_port())],
                                   env=first.env, cwd=REPO, capture_output=True, text=True, timeout=60)
            assert again.returncode != 0
            assert "already uses the state dir" in again.stderr and "SANDPIT_STATE_DIR" in again.stderr
            assert "Traceback" not in again.stderr
        finally:
            second.stop()
    finally:
        first.stop()
