"""``workflow:auto_cancel:on_new_commit: interruptible`` with real processes: the API, a worker running
two jobs at once in sandboxes, Redis, SQLite, a ``git daemon`` and the loopback forge (the fixtures
of test_end_to_end). Needs root (jobs run in real sandboxes)."""

from __future__ import annotations

import time

import pytest

from tests.integration.forges.forge_server import ForgeServer
from tests.integration.forges.gitserver import GitServer
from tests.integration.forges.payloads import push
from tests.integration.forges.test_end_to_end import Api, _register, stack  # noqa: F401 - the fixture
from tests.integration.service.conftest import Service, redis, service  # noqa: F401 - fixtures

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

OLD = """\
workflow:
  auto_cancel:
    on_new_commit: interruptible
build:
  interruptible: true
  script: [sleep 60]
migrate:
  script: [sleep 8, echo MIGRATED]
"""


def test_a_new_push_cancels_only_the_interruptible_job_of_an_older_interruptible_run(
    stack: tuple[Api, GitServer, ForgeServer], service: Service,  # noqa: F811
) -> None:
    """The older run says `on_new_commit: interruptible`: a push while both its jobs run stops the
    interruptible one (`build`, cancelled) and leaves the other (`migrate`) to finish, which GitLab's
    default `conservative` would not (a non-interruptible job had started: nothing cancelled)."""
    api, git, forge = stack
    git.create("app")
    first = git.commit("app", {".gitlab-ci.yml": OLD}, "slow one")
    repo = _register(api, git, forge, "acme/migrations")
    answer = api.deliver(repo, push("github", git.url("app"), "acme/migrations", first))
    assert answer.status_code == 201, answer.text
    old = answer.json()["run_id"]
    deadline = time.monotonic() + 90
    while {j["status"] for j in api.run(old)["jobs"]} != {"running"}:
        assert time.monotonic() < deadline, api.run(old)
        time.sleep(0.1)
    second = git.commit("app", {".gitlab-ci.yml": "fast:\n  script: [echo fast]\n"}, "fast one")
    new = api.deliver(repo, push("github", git.url("app"), "acme/migrations", second, before=first))
    assert new.status_code == 201, new.text
    ended = api.wait(old, timeout=60)
    by_name = {j["name"]: j for j in ended["jobs"]}
    assert (by_name["build"]["status"], by_name["migrate"]["status"]) == ("cancelled", "succeeded"), ended
    assert "MIGRATED" in api.log(by_name["migrate"]["id"])
    assert ended["status"] == "cancelled"  # a job of it was cancelled, none failed
    assert api.wait(new.json()["run_id"])["status"] == "succeeded"
    forge.wait_for(second, "success")
