"""Real web-hook payloads (../shared/corpus/webhooks) pointed at a loopback repository and signed as
each forge signs them: GitHub ``X-Hub-Signature-256``, Gitea/Forgejo ``X-Forgejo-Signature``,
GitLab ``X-Gitlab-Token``."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import uuid
from typing import Any

from tests.conftest import CORPUS, require_corpus

ZERO = "0" * 40


def corpus(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((require_corpus(CORPUS / "webhooks") / name).read_text())
    return data


def _point(repo: dict[str, Any], url: str, full_name: str) -> None:
    repo.update(clone_url=url, html_url=url.removesuffix(".git"), ssh_url=url, git_url=url, url=url,
                full_name=full_name)


def push(forge: str, url: str, full_name: str, sha: str, before: str = ZERO, branch: str = "main",
         message: str = "change") -> dict[str, Any]:
    """A push of ``sha`` to ``branch`` of the repository at ``url``."""
    if forge == "gitlab":
        data = corpus("gitlab/push.captured.json")
        data["project"].update(git_http_url=url, git_ssh_url=url, web_url=url.removesuffix(".git"), http_url=url,
                               ssh_url=url, url=url, path_with_namespace=full_name)
        data["repository"] = {"url": url}
        data.update(ref=f"refs/heads/{branch}", before=before, after=sha, checkout_sha=sha)
        data["commits"] = [{**data["commits"][-1], "id": sha, "message": message}]
        return data
    data = corpus("github/push.json" if forge == "github" else "gitea/forgejo.push.json")
    _point(data["repository"], url, full_name)
    data.update(ref=f"refs/heads/{branch}", before=before, after=sha)
    head = data.get("head_commit") or {}
    data["head_commit"] = {**head, "id": sha, "message": message}
    return data


def github_pull_request(url: str, fork_url: str, full_name: str, sha: str, number: int = 7,
                        action: str = "opened") -> dict[str, Any]:
    """A GitHub pull request from the fork at ``fork_url`` into the repository at ``url``."""
    data = corpus("github/pull_request.opened.fork.json")
    data["action"] = action
    data["number"] = number
    _point(data["repository"], url, full_name)
    _point(data["pull_request"]["base"]["repo"], url, full_name)
    _point(data["pull_request"]["head"]["repo"], fork_url, "stranger/fork")
    data["pull_request"]["head"].update(sha=sha, ref="feature")
    data["pull_request"]["number"] = number
    return copy.deepcopy(data)


def signed(forge: str, body: bytes, secret: str, event: str = "push") -> dict[str, str]:
    """The headers a forge sends with ``body``."""
    if forge == "gitlab":
        return {"X-Gitlab-Event": {"push": "Push Hook", "pull_request": "Merge Request Hook"}[event],
                "X-Gitlab-Event-UUID": str(uuid.uuid4()), "X-Gitlab-Token": secret, "Content-Type": "application/json"}
    mac = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if forge == "github":
        return {"X-GitHub-Event": event, "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": f"sha256={mac}",
                "Content-Type": "application/json"}
    return {"X-Forgejo-Event": event, "X-Forgejo-Delivery": str(uuid.uuid4()), "X-Forgejo-Signature": mac,
            "X-Gitea-Signature": mac, "Content-Type": "application/json"}
