"""A forge's web-hook event, already authenticated and parsed, as what sandpit should do (pure).

:func:`read_event` maps ``(forge, event header, payload)`` to one of:

- :class:`Ping` — answer OK, create nothing (GitHub ``ping``; GitLab has none).
- :class:`Ignored` — an event or action sandpit does not build (``issues``, a PR ``edited``,
  a branch or tag deletion, a ``[skip ci]`` commit); ``reason`` is the recorded verdict.
- :class:`CloseMergeRequest` — a pull/merge request was closed or merged: cancel its runs.
- :class:`Trigger` — create a run: the :class:`~pipelines.language.model.PipelineInputs` fields
  GitLab would give that pipeline (``CI_PIPELINE_SOURCE`` ``push`` or ``merge_request_event``,
  ref, sha, before sha, commit message/author/timestamp, ``CI_MERGE_REQUEST_*``), whether it
  comes from a fork (head repository differs from the base: untrusted), and the clone URL of
  the commit (a fork's, for a fork's pull request).

A payload missing a field sandpit needs raises :class:`EventUnreadable` (the API answers 400
``bad_payload``): it passed the signature check, so it is the forge's format, not an attacker.

>>> push = {"ref": "refs/tags/v1", "before": "0" * 40, "after": "a" * 40, "repository": {"full_name": "o/r"}}
>>> event = read_event("github", "push", push)
>>> event.ref, event.ref_kind, event.trigger
('v1', 'tag', 'push')
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

ZERO_SHA = "0" * 40
_SKIP = re.compile(r"\[(?:skip ci|ci skip)\]", re.IGNORECASE)
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")

GITHUB_PR_BUILD = {"opened": "opened", "reopened": "reopened", "synchronize": "synchronize"}
GITEA_PR_BUILD = {"opened": "opened", "reopened": "reopened", "synchronized": "synchronize"}
GITLAB_MR_BUILD = {"open": "opened", "reopen": "reopened", "update": "synchronize"}
CLOSING = frozenset({"closed", "close", "merge"})


def skips_ci(message: str) -> bool:
    """Whether a commit message asks for no pipeline, as GitLab reads it.

    >>> skips_ci("docs: typo [ci skip]"), skips_ci("skip ci later")
    (True, False)
    """
    return _SKIP.search(message) is not None


class EventUnreadable(ValueError):
    """An authenticated payload without a field the event needs (``message`` names it)."""


@dataclass(frozen=True, slots=True)
class Ping:
    repository: str


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: str  # ignored_event | ref_deleted | skip_ci | no_new_commits
    message: str


@dataclass(frozen=True, slots=True)
class CloseMergeRequest:
    iid: int


@dataclass(frozen=True, slots=True)
class Trigger:
    """A run to create; field names follow ``PipelineInputs`` where they are its fields."""

    trigger: Literal["push", "merge_request"]
    action: str  # push | opened | reopened | synchronize
    ref: str
    ref_kind: Literal["branch", "tag"]
    sha: str
    before_sha: str
    commit_message: str
    commit_author: str
    commit_timestamp: str
    project_path: str
    project_url: str
    clone_url: str  # where the commit is fetched from (the head repository of a pull request)
    from_fork: bool = False
    merge_request_iid: int | None = None
    merge_request_target: str | None = None
    merge_request_title: str = ""
    merge_request_source_project_path: str = ""
    merge_request_source_project_url: str = ""

    def pipeline_fields(self) -> dict[str, Any]:
        """The keyword arguments of ``PipelineInputs`` this event decides.

        >>> t = Trigger("push", "push", "main", "branch", "a" * 40, ZERO_SHA, "m", "", "", "o/r", "", "")
        >>> t.pipeline_fields()["ref"]
        'main'
        """
        return {
            "trigger": self.trigger, "ref": self.ref, "ref_kind": self.ref_kind, "sha": self.sha,
            "before_sha": self.before_sha, "commit_message": self.commit_message,
            "commit_author": self.commit_author, "commit_timestamp": self.commit_timestamp,
            "project_path": self.project_path, "project_url": self.project_url,
            "merge_request_iid": self.merge_request_iid, "merge_request_target": self.merge_request_target,
            "merge_request_title": self.merge_request_title,
            "merge_request_source_project_path": self.merge_request_source_project_path,
            "merge_request_source_project_url": self.merge_request_source_project_url,
        }


Event = Ping | Ignored | CloseMergeRequest | Trigger


def event_name(forge: str, headers: Mapping[str, str]) -> str:
    """The event a delivery announces (lower-case header names), ``""`` when none.

    >>> event_name("gitea", {"x-forgejo-event": "push", "x-gitea-event": "push"})
    'push'
    """
    names = {"github": ("x-github-event",), "gitlab": ("x-gitlab-event",),
             "gitea": ("x-forgejo-event", "x-gitea-event", "x-gogs-event")}[forge]
    for name in names:
        if name in headers:
            return headers[name].strip()
    return ""


def delivery_id(forge: str, headers: Mapping[str, str]) -> str:
    """The forge's id of this delivery (what a redelivery repeats), ``""`` when none.

    >>> delivery_id("gitlab", {"webhook-id": "msg_1", "x-gitlab-event-uuid": "u-1"})
    'u-1'
    """
    names = {"github": ("x-github-delivery",), "gitlab": ("x-gitlab-event-uuid", "idempotency-key", "webhook-id"),
             "gitea": ("x-forgejo-delivery", "x-gitea-delivery", "x-gogs-delivery")}[forge]
    for name in names:
        if headers.get(name, "").strip():
            return headers[name].strip()[:255]
    return ""


def payload_repository_urls(forge: str, payload: Mapping[str, Any]) -> tuple[set[str], str]:
    """Every clone/web URL the payload gives for the repository the event belongs to (the base
    repository of a pull request), normalised (:func:`normalise_url`), and its full name."""
    keys: tuple[str, ...]
    if forge == "gitlab":
        project = _dict(payload.get("project"))
        if not project and payload.get("object_kind") == "merge_request":
            project = _dict(_dict(payload.get("object_attributes")).get("target"))
        keys = ("git_http_url", "git_ssh_url", "web_url", "http_url", "ssh_url", "url", "homepage")
        name = str(project.get("path_with_namespace") or "")
    else:
        project = _dict(payload.get("repository"))
        keys = ("clone_url", "ssh_url", "html_url", "git_url", "url")
        name = str(project.get("full_name") or "")
    urls = {normalise_url(str(project[k])) for k in keys if isinstance(project.get(k), str) and project[k]}
    return urls, name


def normalise_url(url: str) -> str:
    """A repository URL as compared: lower-case, no scheme or credentials, no ``.git``, no ``/``.

    >>> normalise_url("https://user@GitHub.com/Org/Repo.git/"), normalise_url("git@github.com:org/repo.git")
    ('github.com/org/repo', 'github.com/org/repo')
    """
    text = url.strip().lower()
    if "://" in text:
        text = text.split("://", 1)[1]
    elif re.match(r"^[^/]+@[^/:]+:", text):  # scp-like git@host:path
        text = text.replace(":", "/", 1)
    text = text.rsplit("@", 1)[-1] if "@" in text.split("/", 1)[0] else text
    text = text.rstrip("/")
    return text.removesuffix(".git").rstrip("/")


def read_event(forge: str, event: str, payload: Mapping[str, Any]) -> Event:
    """What ``payload`` (announced as ``event``) asks sandpit to do; see the module docstring."""
    if forge == "github":
        return _github(event, payload)
    if forge == "gitea":
        return _gitea(event, payload)
    if forge == "gitlab":
        return _gitlab(event, payload)
    raise ValueError(f"unknown forge {forge!r}")


# --- GitHub and Gitea/Forgejo (Gitea's payloads follow GitHub's shape) ----------------------

def _github(event: str, payload: Mapping[str, Any]) -> Event:
    if event == "ping":
        return Ping(str(_dict(payload.get("repository")).get("full_name") or ""))
    if event == "push":
        return _hub_push(payload)
    if event == "pull_request":
        return _hub_pull_request(payload, GITHUB_PR_BUILD)
    return Ignored("ignored_event", f"GitHub event `{event}` starts no pipeline (push and pull_request do)")


def _gitea(event: str, payload: Mapping[str, Any]) -> Event:
    if event == "ping":  # not sent by Gitea itself, but "Test delivery" tools do
        return Ping(str(_dict(payload.get("repository")).get("full_name") or ""))
    if event == "push":
        return _hub_push(payload)
    if event in ("pull_request", "pull_request_sync"):
        return _hub_pull_request(payload, GITEA_PR_BUILD)
    if event in ("delete", "create"):
        return Ignored("ref_deleted" if event == "delete" else "ignored_event",
                       f"Gitea event `{event}` starts no pipeline (the push of its commits does)")
    return Ignored("ignored_event", f"Gitea/Forgejo event `{event}` starts no pipeline (push and pull_request do)")


def _hub_push(payload: Mapping[str, Any]) -> Event:
    ref_kind, ref = _split_ref(_text(payload, "ref"))
    after = _text(payload, "after").lower()
    if payload.get("deleted") is True or after == ZERO_SHA:
        return Ignored("ref_deleted", f"the push deletes {ref_kind} `{ref}`; nothing to build")
    repo = _dict(payload.get("repository"))
    head = _dict(payload.get("head_commit"))
    if not head:
        commits = payload.get("commits") or []
        head = next((c for c in commits if isinstance(c, dict) and c.get("id") == after), {})
    message = str(head.get("message") or "")
    if _SKIP.search(message):
        return Ignored("skip_ci", "the commit message asks to skip CI (`[skip ci]` or `[ci skip]`)")
    return Trigger(
        trigger="push", action="push", ref=ref, ref_kind=ref_kind, sha=_sha(after, "after"),
        before_sha=_sha(_text(payload, "before").lower() or ZERO_SHA, "before"),
        commit_message=message, commit_author=_author(head.get("author")),
        commit_timestamp=str(head.get("timestamp") or ""), project_path=str(repo.get("full_name") or ""),
        project_url=str(repo.get("html_url") or ""), clone_url=str(repo.get("clone_url") or ""),
    )


def _hub_pull_request(payload: Mapping[str, Any], build: Mapping[str, str]) -> Event:
    action = _text(payload, "action")
    pr = _dict(payload.get("pull_request"))
    number = payload.get("number", pr.get("number"))
    if not isinstance(number, int):
        raise EventUnreadable("the pull_request payload has no `number`")
    if action in CLOSING:
        return CloseMergeRequest(number)
    if action not in build:
        return Ignored("ignored_event", f"pull request action `{action}` starts no pipeline "
                       f"({', '.join(sorted(build))} do)")
    head, base = _dict(pr.get("head")), _dict(pr.get("base"))
    head_repo, base_repo = _dict(head.get("repo")), _dict(base.get("repo")) or _dict(payload.get("repository"))
    head_id = head_repo.get("id", head.get("repo_id"))
    base_id = base_repo.get("id", base.get("repo_id"))
    # a fork: another repository holds the head (GitHub gives head.repo null once the fork is deleted)
    from_fork = head_id is None or base_id is None or head_id != base_id
    repo = _dict(payload.get("repository")) or base_repo
    title = str(pr.get("title") or "")
    return Trigger(
        trigger="merge_request", action=build[action], ref=_text(head, "ref", "pull_request.head.ref"),
        ref_kind="branch", sha=_sha(_text(head, "sha", "pull_request.head.sha").lower(), "pull_request.head.sha"),
        before_sha=_sha(str(payload.get("before") or ZERO_SHA).lower(), "before"),
        # the payload has no commit message: left empty (the checkout will read it from the commit)
        commit_message="", commit_author="", commit_timestamp="",
        project_path=str(repo.get("full_name") or ""), project_url=str(repo.get("html_url") or ""),
        clone_url=str(head_repo.get("clone_url") or repo.get("clone_url") or ""), from_fork=from_fork,
        merge_request_iid=number, merge_request_target=_text(base, "ref", "pull_request.base.ref"),
        merge_request_title=title,
        merge_request_source_project_path=str(head_repo.get("full_name") or ""),
        merge_request_source_project_url=str(head_repo.get("html_url") or ""),
    )


# --- GitLab ----------------------------------------------------------------------------------

def _gitlab(event: str, payload: Mapping[str, Any]) -> Event:
    kind = str(payload.get("object_kind") or "")
    if event in ("Push Hook", "Tag Push Hook") or kind in ("push", "tag_push"):
        return _gitlab_push(payload)
    if event == "Merge Request Hook" or kind == "merge_request":
        return _gitlab_merge_request(payload)
    return Ignored("ignored_event", f"GitLab event `{event or kind}` starts no pipeline "
                   "(Push Hook, Tag Push Hook and Merge Request Hook do)")


def _gitlab_push(payload: Mapping[str, Any]) -> Event:
    ref_kind, ref = _split_ref(_text(payload, "ref"))
    after = _text(payload, "after").lower()
    sha = str(payload.get("checkout_sha") or after).lower()
    if after == ZERO_SHA:
        return Ignored("ref_deleted", f"the push deletes {ref_kind} `{ref}`; nothing to build")
    project = _dict(payload.get("project"))
    commits = [c for c in payload.get("commits") or () if isinstance(c, dict)]
    head = next((c for c in commits if str(c.get("id", "")).lower() == sha), commits[-1] if commits else {})
    message = str(head.get("message") or payload.get("message") or "")
    if _SKIP.search(message) or _skip_option(payload):
        return Ignored("skip_ci", "the commit message (or push option ci.skip) asks to skip CI")
    return Trigger(
        trigger="push", action="push", ref=ref, ref_kind=ref_kind, sha=_sha(sha, "checkout_sha"),
        before_sha=_sha(_text(payload, "before").lower() or ZERO_SHA, "before"), commit_message=message,
        commit_author=_author(head.get("author")), commit_timestamp=str(head.get("timestamp") or ""),
        project_path=str(project.get("path_with_namespace") or ""), project_url=str(project.get("web_url") or ""),
        clone_url=str(project.get("git_http_url") or _dict(payload.get("repository")).get("git_http_url") or ""),
    )


def _gitlab_merge_request(payload: Mapping[str, Any]) -> Event:
    attrs = _dict(payload.get("object_attributes"))
    iid = attrs.get("iid")
    if not isinstance(iid, int):
        raise EventUnreadable("the merge request payload has no `object_attributes.iid`")
    action = str(attrs.get("action") or "")
    if action in CLOSING:
        return CloseMergeRequest(iid)
    if action not in GITLAB_MR_BUILD:
        return Ignored("ignored_event", f"merge request action `{action}` starts no pipeline (open, reopen and "
                       "update with new commits do)")
    if action == "update" and not attrs.get("oldrev"):
        return Ignored("no_new_commits", "the merge request was edited without new commits (no `oldrev`)")
    last = _dict(attrs.get("last_commit"))
    source, target = _dict(attrs.get("source")), _dict(attrs.get("target"))
    project = _dict(payload.get("project")) or target
    source_id, target_id = attrs.get("source_project_id"), attrs.get("target_project_id")
    from_fork = source_id is None or target_id is None or source_id != target_id
    message = str(last.get("message") or "")
    if _SKIP.search(message):
        return Ignored("skip_ci", "the commit message asks to skip CI (`[skip ci]` or `[ci skip]`)")
    return Trigger(
        trigger="merge_request", action=GITLAB_MR_BUILD[action],
        ref=_text(attrs, "source_branch", "object_attributes.source_branch"), ref_kind="branch",
        sha=_sha(str(last.get("id") or "").lower(), "object_attributes.last_commit.id"),
        before_sha=_sha(str(attrs.get("oldrev") or ZERO_SHA).lower(), "object_attributes.oldrev"),
        commit_message=message, commit_author=_author(last.get("author")),
        commit_timestamp=str(last.get("timestamp") or ""),
        project_path=str(project.get("path_with_namespace") or ""), project_url=str(project.get("web_url") or ""),
        clone_url=str(source.get("git_http_url") or project.get("git_http_url") or ""), from_fork=from_fork,
        merge_request_iid=iid, merge_request_target=_text(attrs, "target_branch", "object_attributes.target_branch"),
        merge_request_title=str(attrs.get("title") or ""),
        merge_request_source_project_path=str(source.get("path_with_namespace") or ""),
        merge_request_source_project_url=str(source.get("web_url") or ""),
    )


def _skip_option(payload: Mapping[str, Any]) -> bool:
    options = payload.get("push_options")
    return isinstance(options, dict) and isinstance(options.get("ci"), dict) and "skip" in options["ci"]


# --- small readers ---------------------------------------------------------------------------

def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(mapping: Mapping[str, Any], key: str, where: str | None = None) -> str:
    value = mapping.get(key)
    if not isinstance(value, str) or not value:
        raise EventUnreadable(f"the payload has no `{where or key}`")
    return value


def _sha(value: str, where: str) -> str:
    if not _SHA.fullmatch(value):
        raise EventUnreadable(f"`{where}` is not a commit id: {value[:80]!r}")
    return value


def _split_ref(ref: str) -> tuple[Literal["branch", "tag"], str]:
    if ref.startswith("refs/tags/"):
        return "tag", ref.removeprefix("refs/tags/")
    if ref.startswith("refs/heads/"):
        return "branch", ref.removeprefix("refs/heads/")
    raise EventUnreadable(f"`ref` is neither a branch nor a tag: {ref[:120]!r}")


def _author(author: object) -> str:
    data = _dict(author)
    name, email = str(data.get("name") or ""), str(data.get("email") or "")
    return f"{name} <{email}>" if email else name
