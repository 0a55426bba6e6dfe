"""``sandpit repos`` as a user runs it: a real CLI process against the app served on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.integration.api.conftest import TRUSTED_TOKEN, USER_TOKEN, LiveServer

REPO_ROOT = Path(__file__).resolve().parents[3]


def sandpit(live: LiveServer, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "SANDPIT_API_URL": live.url, "SANDPIT_TOKEN": token}
    full.pop("SANDPIT_WEBHOOK_SECRET", None)
    return subprocess.run([sys.executable, "-m", "worker", "repos", *args], cwd=REPO_ROOT, env=full,
                          capture_output=True, text=True, timeout=60)


def test_repos_cli_add_list_show_rotate_rm(live: LiveServer, tmp_path: Path) -> None:
    """add prints the web-hook URL and a generated secret once; list/show never print a secret;
    rotate-secret takes a file; rm forgets it; an untrusted token is refused."""
    added = sandpit(live, TRUSTED_TOKEN, "add", "acme/app", "--forge", "gitea", "--clone-url",
                    "https://git.example.org/acme/app.git", "--fork-policy", "never")
    assert added.returncode == 0, added.stderr
    secret_line = next(line for line in added.stdout.splitlines() if "secret:" in line)
    secret = secret_line.split()[1]
    assert len(secret) >= 40
    assert "/api/v1/webhooks/gitea/" in added.stdout
    listed = sandpit(live, TRUSTED_TOKEN, "list")
    assert "acme/app" in listed.stdout and "never" in listed.stdout and secret not in listed.stdout
    shown = sandpit(live, TRUSTED_TOKEN, "show", "acme/app")
    assert shown.returncode == 0 and "forks: never" in shown.stdout and secret not in shown.stdout
    new_secret = tmp_path / "secret"
    new_secret.write_text("a-rotated-secret-from-a-file\n")
    rotated = sandpit(live, TRUSTED_TOKEN, "rotate-secret", "acme/app", "--secret-file", str(new_secret))
    assert rotated.returncode == 0 and "rotated" in rotated.stdout and "a-rotated-secret" not in rotated.stdout
    refused = sandpit(live, USER_TOKEN, "list")
    assert refused.returncode != 0 and "403" in refused.stderr
    dup = sandpit(live, TRUSTED_TOKEN, "add", "acme/app", "--forge", "gitea", "--clone-url",
                  "https://git.example.org/acme/app.git")
    assert dup.returncode != 0 and "repository_exists" in dup.stderr
    removed = sandpit(live, TRUSTED_TOKEN, "rm", "acme/app")
    assert removed.returncode == 0, removed.stderr
    gone = sandpit(live, TRUSTED_TOKEN, "show", "acme/app")
    assert gone.returncode != 0 and "unknown_repository" in gone.stderr


def test_cli_and_signed_ping_through_a_real_api_process(redis_url: str, tmp_path: Path) -> None:
    """``python -m api`` as ``sandpit up`` starts it: the CLI registers a repository, the secret
    key file is made 0600 in the state dir, a ping signed with the printed secret is answered
    pong and one signed with another secret 401; the server's output never holds the secret."""
    import hashlib
    import hmac
    import json
    import signal
    import socket
    import stat
    import time

    import httpx

    from tests.integration.api.conftest import free_port

    port = free_port()
    state = tmp_path / "state"
    log = tmp_path / "api.log"
    env = {**os.environ, "SANDPIT_STATE_DIR": str(state), "SANDPIT_REDIS_URL": redis_url,
           "SANDPIT_API_TOKENS": f"local:{TRUSTED_TOKEN}:trusted"}
    env.pop("SANDPIT_SECRET_KEY", None)
    env.pop("SANDPIT_DATABASE_URL", None)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "api", "--host", "127.0.0.1", "--port", str(port),
                                 "--log-level", "info"], cwd=REPO_ROOT, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        server = LiveServer(f"http://127.0.0.1:{port}")
        added = sandpit(server, TRUSTED_TOKEN, "add", "octo/hello", "--forge", "github", "--clone-url",
                        "https://github.com/Octocoders/Hello-World.git")
        assert added.returncode == 0, added.stderr
        secret = next(line for line in added.stdout.splitlines() if "secret:" in line).split()[1]
        hook_url = next(line for line in added.stdout.splitlines() if "web-hook:" in line).split()[1]
        assert stat.S_IMODE((state / "secret-key").stat().st_mode) == 0o600
        body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1,
                           "repository": {"full_name": "Octocoders/Hello-World",
                                          "clone_url": "https://github.com/Octocoders/Hello-World.git"}}).encode()

        def ping(key: str) -> httpx.Response:
            mac = hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
            return httpx.post(hook_url, content=body, timeout=30, headers={
                "X-GitHub-Event": "ping", "X-GitHub-Delivery": key[:8], "X-Hub-Signature-256": f"sha256={mac}"})

        assert ping("not-the-secret-at-all").status_code == 401
        answer = ping(secret)
        assert (answer.status_code, answer.json()["verdict"]) == (200, "pong")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert secret not in log.read_text()
