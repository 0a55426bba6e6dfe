"""Commit statuses: what a run reports and the request each forge takes for it (pure).

sandpit's states are GitLab's (``pending``, ``running``, ``success``, ``failed``,
``canceled``) plus ``error``; each forge gets its own words for them:

=========  =========  =========  ===========
sandpit    GitHub     Gitea      GitLab
=========  =========  =========  ===========
pending    pending    pending    pending
running    pending    pending    running
success    success    success    success
failed     failure    failure    failed
canceled   error      error      canceled
error      error      error      failed
=========  =========  =========  ===========

(GitHub and Gitea have no "running" or "canceled": a running run is ``pending`` with a
description that says so, a cancelled one ``error``: it did not fail, it did not finish.)

Endpoints: GitHub ``POST /repos/{owner}/{repo}/statuses/{sha}`` (``Authorization: Bearer``),
Gitea/Forgejo the same path under ``/api/v1`` (``Authorization: token``), GitLab ``POST
/projects/{url-encoded path}/statuses/{sha}`` under ``/api/v4`` (``PRIVATE-TOKEN``). The API
base is the repository's ``api_url`` when it was registered with one, else derived from the
clone URL (:func:`api_base`).

>>> run_state("running", {"running": 1, "created": 2}), describe("running", "running", {"running": 1, "created": 2})
('running', 'running: 0 of 3 jobs finished')
>>> describe("failed", "failed", {"succeeded": 3, "failed": 1})
'3 passed, 1 failed'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

STATES = ("pending", "running", "success", "failed", "canceled", "error")
_WORDS = {
    "github": {"running": "pending", "failed": "failure", "canceled": "error"},
    "gitea": {"running": "pending", "failed": "failure", "canceled": "error"},
    "gitlab": {"error": "failed"},
}
_STARTED = ("running", "succeeded", "failed", "error")
_FINISHED = ("succeeded", "failed", "error", "cancelled", "skipped")
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
GITHUB_DESCRIPTION_MAX = 140  # GitHub refuses a longer description; the others take it too


class StatusUnsendable(ValueError):
    """A repository whose statuses cannot be addressed (a project path or commit id that is not one)."""


@dataclass(frozen=True, slots=True)
class StatusRequest:
    method: str
    url: str
    headers: dict[str, str]
    json: dict[str, Any]

    def __repr__(self) -> str:  # the headers hold the token
        return f"StatusRequest({self.method} {self.url})"


def run_state(run_status: str, jobs: Mapping[str, int]) -> str:
    """What a run reports, from its stored status and its jobs counted by status.

    >>> run_state("waiting_for_approval", {"created": 2}), run_state("running", {"queued": 1})
    ('pending', 'pending')
    """
    if run_status == "succeeded":
        return "success"
    if run_status == "failed":
        return "failed"
    if run_status == "cancelled":
        return "canceled"
    if run_status == "running" and any(jobs.get(s, 0) for s in _STARTED):
        return "running"
    return "pending"


def describe(state: str, run_status: str, jobs: Mapping[str, int]) -> str:
    """The status's description: why it waits, how far it got, or how its jobs ended.

    >>> describe("pending", "waiting_for_approval", {"created": 1})
    'waiting for an admin to approve this run'
    >>> describe("success", "succeeded", {"succeeded": 2, "skipped": 1})
    '2 passed, 1 skipped'
    """
    total = sum(jobs.values())
    if state == "pending":
        if run_status == "waiting_for_approval":
            return "waiting for an admin to approve this run"
        if run_status == "manual":
            return "waiting for someone to play a manual job"
        return "waiting for a worker"
    if state == "running":
        done = sum(jobs.get(s, 0) for s in _FINISHED)
        return f"running: {done} of {total} jobs finished"
    parts = [(jobs.get("succeeded", 0), "passed"), (jobs.get("failed", 0) + jobs.get("error", 0), "failed"),
             (jobs.get("cancelled", 0), "cancelled"), (jobs.get("skipped", 0), "skipped"),
             (jobs.get("manual", 0), "manual")]
    text = ", ".join(f"{n} {word}" for n, word in parts if n)
    return text or "no job ran"


def api_base(forge: str, clone_url: str) -> str:
    """The forge's REST API base for a repository cloned from ``clone_url`` (https unless the
    clone URL is plain http).

    >>> api_base("github", "https://github.com/acme/app.git"), api_base("gitlab", "git://lab.example/g/p")
    ('https://api.github.com', 'https://lab.example/api/v4')
    >>> api_base("gitea", "http://127.0.0.1:3000/o/r.git")
    'http://127.0.0.1:3000/api/v1'
    """
    parts = urlsplit(clone_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    scheme = "http" if parts.scheme == "http" else "https"
    if forge == "github":
        return "https://api.github.com" if host.lower() == "github.com" else f"{scheme}://{host}/api/v3"
    return f"{scheme}://{host}/api/v4" if forge == "gitlab" else f"{scheme}://{host}/api/v1"


def project_path(clone_url: str) -> str:
    """The repository's path on its forge (``owner/name``; GitLab: ``group/sub/name``).

    >>> project_path("https://lab.example/group/sub/app.git")
    'group/sub/app'
    """
    return urlsplit(clone_url).path.strip("/").removesuffix(".git")


def status_request(forge: str, base: str, project: str, sha: str, token: str, state: str, context: str,
                   description: str, target_url: str) -> StatusRequest:
    """The HTTP request that sets ``state`` on commit ``sha`` of ``project``.

    >>> r = status_request("gitlab", "https://lab/api/v4", "g/p", "a" * 40, "t", "error", "sandpit", "x", "")
    >>> r.url.split("/statuses")[0], r.json["state"], r.json["name"]
    ('https://lab/api/v4/projects/g%2Fp', 'failed', 'sandpit')
    """
    if not _PROJECT.fullmatch(project) or ".." in project:
        raise StatusUnsendable(f"{project[:80]!r} is not a repository path statuses can be sent for")
    if not _SHA.fullmatch(sha):
        raise StatusUnsendable(f"{sha[:80]!r} is not a commit id")
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    word = _WORDS.get(forge, {}).get(state, state)
    text = description[:GITHUB_DESCRIPTION_MAX]
    base = base.rstrip("/")
    if forge == "gitlab":
        body: dict[str, Any] = {"state": word, "name": context, "description": text}
        if target_url:
            body["target_url"] = target_url
        return StatusRequest("POST", f"{base}/projects/{quote(project, safe='')}/statuses/{sha}",
                             {"PRIVATE-TOKEN": token, "Accept": "application/json"}, body)
    body = {"state": word, "context": context, "description": text}
    if target_url:
        body["target_url"] = target_url
    if forge == "github":
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                   "X-GitHub-Api-Version": "2022-11-28"}
    else:
        headers = {"Authorization": f"token {token}", "Accept": "application/json"}
    owner_repo = "/".join(quote(part, safe="") for part in project.split("/"))
    return StatusRequest("POST", f"{base}/repos/{owner_repo}/statuses/{sha}", headers, body)


def retry_delay(attempts: int, *, first_s: float = 2.0, cap_s: float = 600.0) -> float:
    """Seconds before try ``attempts + 1`` of a status the forge did not take: doubling from
    ``first_s``, capped (a forge down for hours is tried every ``cap_s``, and nothing is dropped).

    >>> [retry_delay(n) for n in (1, 2, 3)], retry_delay(30)
    ([2.0, 4.0, 8.0], 600.0)
    """
    return min(cap_s, first_s * 2 ** max(0, attempts - 1))


def permanent_refusal(status_code: int) -> bool:
    """Whether a forge's answer means "never" (bad token, unknown repository or commit), not
    "later" (down, rate limited, timed out).

    >>> [permanent_refusal(c) for c in (401, 404, 422, 429, 500, 503)]
    [True, True, True, False, False, False]
    """
    return 400 <= status_code < 500 and status_code not in (408, 409, 425, 429)
