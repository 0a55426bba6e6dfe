"""Event mapping over the real payloads of tests/../shared/corpus/webhooks (GitLab's inputs)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipelines.forges.events import (
    CloseMergeRequest,
    EventUnreadable,
    Ignored,
    Ping,
    Trigger,
    delivery_id,
    event_name,
    normalise_url,
    payload_repository_urls,
    read_event,
)
from pipelines.language.model import PipelineInputs
from pipelines.language.variables import pipeline_variables
from tests.conftest import CORPUS, require_corpus

ZERO = "0" * 40


def payload(name: str) -> dict[str, Any]:
    root = require_corpus(CORPUS / "webhooks")
    data: dict[str, Any] = json.loads((root / name).read_text())
    return data


# (file, forge, event header) -> expected: kind and, for triggers, the CI_* variables GitLab would set
TRIGGERS = [
    ("github/push.json", "github", "push", {
        "CI_PIPELINE_SOURCE": "push", "CI_COMMIT_REF_NAME": "master", "CI_COMMIT_BRANCH": "master",
        "CI_COMMIT_SHA": "b25c56ec4dd6dce42d202eac64f6d2d399a0539d",
        "CI_PROJECT_PATH": "mendersoftware/workflows-enterprise"}),
    ("github/push.new-branch.json", "github", "push", {
        "CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BEFORE_SHA": ZERO, "CI_COMMIT_TITLE": "Initial commit"}),
    ("github/pull_request.opened.json", "github", "pull_request", {
        "CI_PIPELINE_SOURCE": "merge_request_event", "CI_MERGE_REQUEST_IID": "2",
        "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "changes", "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "master",
        "CI_MERGE_REQUEST_SOURCE_PROJECT_PATH": "Codertocat/Hello-World"}),
    ("github/pull_request.synchronize.json", "github", "pull_request", {
        "CI_PIPELINE_SOURCE": "merge_request_event", "CI_MERGE_REQUEST_IID": "2"}),
    ("github/pull_request.opened.fork.json", "github", "pull_request", {
        "CI_PIPELINE_SOURCE": "merge_request_event", "CI_MERGE_REQUEST_IID": "140",
        "CI_MERGE_REQUEST_SOURCE_PROJECT_PATH": "tranchitella/workflows",
        "CI_PROJECT_PATH": "mendersoftware/workflows"}),
    ("gitlab/push.json", "gitlab", "Push Hook", {
        "CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "master", "CI_PROJECT_PATH": "mike/diaspora",
        "CI_COMMIT_SHA": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"}),
    ("gitlab/push.captured.json", "gitlab", "Push Hook", {
        "CI_COMMIT_BRANCH": "main", "CI_COMMIT_BEFORE_SHA": "ffe8eb4f91d1fe6bc49f1e610e50e4b5767f0104",
        "CI_COMMIT_TITLE": "Update main.go", "CI_COMMIT_AUTHOR": "the test <test@test.test>"}),
    ("gitlab/tag_push.json", "gitlab", "Tag Push Hook", {"CI_COMMIT_TAG": "v1.0.0", "CI_COMMIT_REF_NAME": "v1.0.0"}),
    ("gitlab/tag_push.captured.json", "gitlab", "Tag Push Hook", {"CI_COMMIT_TAG": "v22"}),
    ("gitlab/merge_request.json", "gitlab", "Merge Request Hook", {
        "CI_PIPELINE_SOURCE": "merge_request_event", "CI_MERGE_REQUEST_IID": "1",
        "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "ms-viewport", "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "master"}),
    ("gitlab/merge_request.captured.json", "gitlab", "Merge Request Hook", {
        "CI_MERGE_REQUEST_IID": "3", "CI_COMMIT_SHA": "2f7670508b771e7e77839402be8b34b13787aba8"}),
    ("gitea/push.json", "gitea", "push", {"CI_COMMIT_BRANCH": "master", "CI_PROJECT_PATH": "example/example"}),
    ("gitea/push.docs.json", "gitea", "push", {"CI_COMMIT_BRANCH": "develop", "CI_COMMIT_TITLE": "Webhooks Yay!"}),
    ("gitea/forgejo.push.json", "gitea", "push", {"CI_COMMIT_BRANCH": "fdsafdsa", "CI_COMMIT_BEFORE_SHA": ZERO}),
    ("gitea/pull_request.json", "gitea", "pull_request", {"CI_MERGE_REQUEST_IID": "2"}),
    ("gitea/pull_request.synchronized.json", "gitea", "pull_request", {
        "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "feature", "CI_MERGE_REQUEST_IID": "1"}),
    ("gitea/forgejo.pull_request.json", "gitea", "pull_request", {
        "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "6543-patch-1", "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main"}),
]

FORKS = {"github/pull_request.opened.fork.json", "gitea/pull_request.json"}


@pytest.mark.parametrize(("name", "forge", "event", "expected"), TRIGGERS)
def test_triggers_map_to_gitlab_variables(name: str, forge: str, event: str, expected: dict[str, str]) -> None:
    """A push, tag push or pull/merge request gives the CI_* variables GitLab gives that pipeline."""
    found = read_event(forge, event, payload(name))
    assert isinstance(found, Trigger)
    variables = pipeline_variables(PipelineInputs(**found.pipeline_fields()))
    assert {k: variables.get(k) for k in expected} == expected
    if found.trigger == "merge_request":
        assert "CI_COMMIT_BRANCH" not in variables
    assert found.from_fork == (name in FORKS)


@pytest.mark.parametrize(("name", "forge", "event", "kind", "reason"), [
    ("github/ping.json", "github", "ping", Ping, None),
    ("github/push.tag-deleted.json", "github", "push", Ignored, "ref_deleted"),
    ("github/check_run.completed.json", "github", "check_run", Ignored, "ignored_event"),
    ("github/workflow_run.completed.json", "github", "workflow_run", Ignored, "ignored_event"),
])
def test_events_that_build_nothing(name: str, forge: str, event: str, kind: type, reason: str | None) -> None:
    """Ping, deletions and other events create no run, each with its own verdict."""
    found = read_event(forge, event, payload(name))
    assert isinstance(found, kind)
    if reason is not None:
        assert isinstance(found, Ignored) and found.reason == reason


@pytest.mark.parametrize(("name", "forge", "event", "change", "expected"), [
    ("github/pull_request.opened.json", "github", "pull_request", {"action": "closed"}, CloseMergeRequest(2)),
    ("github/pull_request.opened.json", "github", "pull_request", {"action": "edited"}, "ignored_event"),
    ("github/pull_request.opened.json", "github", "pull_request", {"action": "reopened"}, "reopened"),
    ("gitea/pull_request.synchronized.json", "gitea", "pull_request", {"action": "closed"}, CloseMergeRequest(1)),
    ("gitea/push.json", "gitea", "push", {"after": ZERO}, "ref_deleted"),
    ("gitlab/push.captured.json", "gitlab", "Push Hook", {"after": ZERO, "checkout_sha": None}, "ref_deleted"),
    ("gitlab/push.captured.json", "gitlab", "Push Hook", {"push_options": {"ci": {"skip": None}}}, "skip_ci"),
])
def test_actions(name: str, forge: str, event: str, change: dict[str, Any], expected: object) -> None:
    """Closing cancels, an edit builds nothing, a deleted ref builds nothing, reopening builds."""
    data = {**payload(name), **change}
    found = read_event(forge, event, data)
    if isinstance(expected, CloseMergeRequest):
        assert found == expected
    elif expected in ("ignored_event", "ref_deleted", "skip_ci"):
        assert isinstance(found, Ignored) and found.reason == expected
    else:
        assert isinstance(found, Trigger) and found.action == expected


@pytest.mark.parametrize("action", ["close", "merge"])
def test_gitlab_merge_request_close_and_merge_cancel(action: str) -> None:
    """GitLab's close and merge both end the merge request (its runs are cancelled)."""
    data = payload("gitlab/merge_request.captured.json")
    data["object_attributes"] = {**data["object_attributes"], "action": action}
    assert read_event("gitlab", "Merge Request Hook", data) == CloseMergeRequest(3)


def test_gitlab_update_without_new_commits_builds_nothing() -> None:
    """A merge request ``update`` without ``oldrev`` is an edit (title, labels), not new commits."""
    data = payload("gitlab/merge_request.captured.json")
    data["object_attributes"] = {**data["object_attributes"], "action": "update"}
    found = read_event("gitlab", "Merge Request Hook", data)
    assert isinstance(found, Ignored) and found.reason == "no_new_commits"
    data["object_attributes"]["oldrev"] = "1" * 40
    found = read_event("gitlab", "Merge Request Hook", data)
    assert isinstance(found, Trigger) and found.action == "synchronize" and found.before_sha == "1" * 40


def test_gitlab_fork_merge_request_is_untrusted() -> None:
    """A merge request whose source project is another project comes from a fork."""
    data = payload("gitlab/merge_request.captured.json")
    data["object_attributes"] = {**data["object_attributes"], "source_project_id": 1}
    found = read_event("gitlab", "Merge Request Hook", data)
    assert isinstance(found, Trigger) and found.from_fork


@pytest.mark.parametrize("message", ["fix [skip ci]", "[CI SKIP] docs", "wip\n\n[ci skip]"])
def test_skip_directives(message: str) -> None:
    """``[skip ci]`` / ``[ci skip]`` anywhere in the head commit's message creates nothing."""
    data = payload("github/push.json")
    data["head_commit"] = {**data["head_commit"], "message": message}
    found = read_event("github", "push", data)
    assert isinstance(found, Ignored) and found.reason == "skip_ci"


@pytest.mark.parametrize(("change", "why"), [
    ({"ref": "refs/notes/x"}, "neither a branch nor a tag"),
    ({"after": "not-a-sha"}, "not a commit id"),
    ({"ref": None}, "no `ref`"),
])
def test_unreadable_payloads(change: dict[str, Any], why: str) -> None:
    """An authenticated payload without what the event needs is refused with the field named."""
    with pytest.raises(EventUnreadable, match=why):
        read_event("github", "push", {**payload("github/push.json"), **change})


def test_headers_and_repository_urls() -> None:
    """Event names, delivery ids (Forgejo's first) and the repository URLs a payload names."""
    assert event_name("gitea", {"x-gitea-event": "push"}) == "push"
    assert delivery_id("gitea", {"x-gitea-delivery": "g", "x-forgejo-delivery": "f"}) == "f"
    assert delivery_id("github", {}) == ""
    urls, name = payload_repository_urls("github", payload("github/push.json"))
    assert normalise_url("https://github.com/mendersoftware/workflows-enterprise.git") in urls
    assert name == "mendersoftware/workflows-enterprise"
    urls, _ = payload_repository_urls("gitlab", payload("gitlab/push.captured.json"))
    assert normalise_url("http://10.40.8.5:3200/test/woodpecker.git") in urls
