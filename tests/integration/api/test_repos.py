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
