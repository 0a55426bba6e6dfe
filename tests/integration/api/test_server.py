"""``python -m api`` as a real process: migrates, serves, takes a run, stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

from pipelines.names import QUEUE
from tests.conftest import REPO
from tests.integration.api.conftest import TOKENS, TRUSTED_TOKEN, free_port


def test_python_m_api_serves_until_sigterm(tmp_path: Path, redis_url: str, rds: redis.Redis) -> None:
    """A fresh state dir (SQLite by default) is migrated at start; a trusted token's run lands
    in the broker queue; SIGTERM stops the server cleanly."""
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "SANDPIT_STATE_DIR": str(tmp_path / "state"),
        "SANDPIT_REDIS_URL": redis_url,
        "SANDPIT_API_TOKENS": TOKENS,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "api", "--port", str(port), "--log-level", "warning"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the API did not come up"
            time.sleep(0.05)
        response = httpx.post(
            f"{base}/api/v1/runs", content="solo:\n  script: [make]\n",
            headers={"Content-Type": "text/yaml", "Authorization": f"Bearer {TRUSTED_TOKEN}"},
        )
        assert response.status_code == 201, response.text
        assert response.json()["trust"] == "trusted"
        assert rds.llen(QUEUE) == 1
        assert (tmp_path / "state" / "sandpit.db").exists()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        output = proc.communicate(timeout=15)[0].decode()
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells why
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Traceback" not in output
