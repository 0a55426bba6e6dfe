"""The server policy through the REST API: caps refused with 422, defaults stored, trust levels,
jobs per run, runs in flight per token (429) — on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import select

from api.settings import ApiSettings
from pipelines.policy import Policy
from pipelines.store.db import session_scope
from pipelines.store.models import Run
from pipelines.store.reads import planned_jobs
from tests.integration.api.conftest import TRUSTED_TOKEN, USER_TOKEN, claim, finish, jobs_of, serve_in_thread

GiB = 1024**3
YAML = {"Content-Type": "application/yaml"}
GREEDY = """\
build:
  script: [make]
greedy:
  script: [make]
  timeout: 3h
  sandbox: {memory: 200G, cpus: 64, network: egress}
"""


@contextlib.contextmanager
def served(settings: ApiSettings, **policy_env: str) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """(untrusted user client, trusted client) on an API whose policy ``policy_env`` sets."""
    custom = dataclasses.replace(settings, policy=Policy.from_env(policy_env))
    with serve_in_thread(custom) as server:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {USER_TOKEN}"}, timeout=30) as user, \
                httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TRUSTED_TOKEN}"},
                             timeout=30) as trusted:
            yield user, trusted


def runs_stored(engine: Engine) -> int:
    with session_scope(engine) as session:
        return len(session.exec(select(Run.id)).all())


def stored_jobs(engine: Engine, run_id: str) -> list[Any]:
    with session_scope(engine) as session:
        return list(planned_jobs(session, run_id))


def test_a_request_over_the_caps_is_refused_naming_each_cap(client: httpx.Client, engine: Engine) -> None:
    """memory: 200G, cpus: 64, egress and a 3h timeout from an untrusted token: 422, one problem per
    cap with its location and setting, nothing stored (it was 201 and ran)."""
    response = client.post("/api/v1/runs", content=GREEDY, headers=YAML)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "over_policy" and "untrusted policy" in body["message"]
    problems = body["problems"]
    assert {(p["file"], p["line"], p["col"], p["code"]) for p in problems} == {("pipeline.yml", 3, 1, "over-policy")}
    settings = sorted(p["message"].rsplit("(", 1)[1].rstrip(")") for p in problems)
    assert settings == ["SANDPIT_POLICY_UNTRUSTED_CPUS", "SANDPIT_POLICY_UNTRUSTED_EGRESS",
                        "SANDPIT_POLICY_UNTRUSTED_MEMORY", "SANDPIT_POLICY_UNTRUSTED_TIMEOUT"]
    assert any("asks for memory 200 GiB; the untrusted policy allows at most 4 GiB" in p["message"] for p in problems)
    assert runs_stored(engine) == 0


def test_defaults_are_stored_with_the_jobs(settings: ApiSettings, engine: Engine) -> None:
    """What the pipeline leaves out is filled with its level's defaults in the stored spec (what the
    worker runs); what it says is kept."""
    text = "plain:\n  script: [x]\nsized:\n  script: [x]\n  timeout: 5m\n  sandbox: {memory: 1G, cpus: 0.5}\n"
    with served(settings, SANDPIT_POLICY_UNTRUSTED_DEFAULT_MEMORY="768M",
                SANDPIT_POLICY_TRUSTED_DEFAULT_MEMORY="3G", SANDPIT_POLICY_UNTRUSTED_LOG="2M") as (user, trusted):
        mine = user.post("/api/v1/runs", content=text, headers=YAML)
        theirs = trusted.post("/api/v1/runs", content=text, headers=YAML)
    assert mine.status_code == theirs.status_code == 201, mine.text + theirs.text
    plain, sized = stored_jobs(engine, mine.json()["id"])
    assert (plain.sandbox.memory_bytes, plain.sandbox.cpus, plain.sandbox.pids) == (768 * 1024**2, 1.0, 1024)
    assert (plain.sandbox.disk_bytes, plain.timeout_seconds, plain.sandbox.log_bytes) == (4 * GiB, 3600, 2 * 1024**2)
    assert (sized.sandbox.memory_bytes, sized.sandbox.cpus, sized.timeout_seconds) == (GiB, 0.5, 300)
    trusted_plain = stored_jobs(engine, theirs.json()["id"])[0]
    assert trusted_plain.sandbox.memory_bytes == 3 * GiB and trusted_plain.sandbox.log_bytes == 16 * 1024**2


def test_trust_level_of_a_run(settings: ApiSettings, engine: Engine) -> None:
    """A trusted token's runs are trusted (looser caps); it may ask for `untrusted`; an untrusted
    token asking for `trusted` gets 403 and nothing is stored."""
    egress = "net:\n  script: [x]\n  sandbox: {network: egress}\n"
    with served(settings) as (user, trusted):
        refused = user.post("/api/v1/runs", json={"pipeline": egress, "trust": "trusted"})
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
        assert "may not create trusted runs" in refused.json()["message"]
        assert runs_stored(engine) == 0
        assert user.post("/api/v1/runs", content=egress, headers=YAML).status_code == 422
        allowed = trusted.post("/api/v1/runs", content=egress, headers=YAML)
        assert allowed.status_code == 201 and allowed.json()["trust"] == "trusted"
        lowered = trusted.post("/api/v1/runs", json={"pipeline": egress, "trust": "untrusted"})
        assert lowered.status_code == 422 and "SANDPIT_POLICY_UNTRUSTED_EGRESS" in lowered.text
        plain = trusted.post("/api/v1/runs", json={"pipeline": "t: {script: [x]}", "trust": "untrusted"})
        assert plain.status_code == 201 and plain.json()["trust"] == "untrusted"
        bad = trusted.post("/api/v1/runs", json={"pipeline": "t: {script: [x]}", "trust": "admin"})
        assert bad.status_code == 400
        # a YAML body says it with ?trust=
        yaml_lowered = trusted.post("/api/v1/runs", content=egress, headers=YAML, params={"trust": "untrusted"})
        assert yaml_lowered.status_code == 422 and "SANDPIT_POLICY_UNTRUSTED_EGRESS" in yaml_lowered.text
        assert user.post("/api/v1/runs", content=egress, headers=YAML, params={"trust": "trusted"}).status_code == 403
        clash = trusted.post("/api/v1/runs", json={"pipeline": egress, "trust": "trusted"},
                             params={"trust": "untrusted"})
        assert clash.status_code == 400 and "disagree" in clash.json()["message"]


def test_jobs_per_run_cap(client: httpx.Client, settings: ApiSettings, engine: Engine) -> None:
    """The default cap (500) refuses a 600-job pipeline with 422 naming the cap; a lower setting
    lowers it."""
    text = "".join(f"t{i}:\n  script: [x]\n  parallel: 200\n" for i in range(3))
    response = client.post("/api/v1/runs", content=text, headers=YAML)
    assert response.status_code == 422, response.text[:500]
    [problem] = response.json()["problems"]
    assert "plans 600 jobs; the untrusted policy allows at most 500 per run (SANDPIT_POLICY_UNTRUSTED_JOBS)" in (
        problem["message"])
    assert runs_stored(engine) == 0
    with served(settings, SANDPIT_POLICY_UNTRUSTED_JOBS="4") as (user, _trusted):
        assert user.post("/api/v1/runs", content="t:\n  script: [x]\n  parallel: 4\n", headers=YAML).status_code == 201
        over = user.post("/api/v1/runs", content="t:\n  script: [x]\n  parallel: 5\n", headers=YAML)
        assert over.status_code == 422 and "at most 4 per run" in over.text


def test_runs_in_flight_per_token(settings: ApiSettings, engine: Engine) -> None:
    """With a cap of 2, a token's third run in flight gets 429 (Retry-After, naming the cap); other
    tokens are not held up; once one of its runs ends, the token may submit again."""
    text = "t: {script: [x]}\n"
    with served(settings, SANDPIT_POLICY_UNTRUSTED_RUNS="2") as (user, trusted):
        first, second = (user.post("/api/v1/runs", content=text, headers=YAML) for _ in range(2))
        assert first.status_code == second.status_code == 201
        refused = user.post("/api/v1/runs", content=text, headers=YAML)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"] == "too_many_runs" and refused.headers["Retry-After"].isdigit()
        assert "token:user has 2 run(s) in flight" in refused.json()["message"]
        assert "(SANDPIT_POLICY_UNTRUSTED_RUNS)" in refused.json()["message"]
        assert trusted.post("/api/v1/runs", content=text, headers=YAML).status_code == 201
        [job_id] = jobs_of(engine, first.json()["id"])
        finish(engine, job_id, claim(engine, job_id))
        assert user.get(f"/api/v1/runs/{first.json()['id']}").json()["finished_at"] is not None
        assert user.post("/api/v1/runs", content=text, headers=YAML).status_code == 201
    assert runs_stored(engine) == 4


def test_runs_in_flight_cap_holds_under_concurrent_submissions(settings: ApiSettings, engine: Engine) -> None:
    """Eight submissions at once against a cap of 3: exactly 3 are created, the rest get 429 (the
    count and the insert are one transaction under the submitter's lock)."""
    statuses: list[int] = []
    lock = threading.Lock()
    with served(settings, SANDPIT_POLICY_UNTRUSTED_RUNS="3") as (user, _trusted):
        start = threading.Barrier(8)

        def submit() -> None:
            start.wait()
            status = user.post("/api/v1/runs", content="t: {script: [x]}\n", headers=YAML).status_code
            with lock:
                statuses.append(status)

        threads = [threading.Thread(target=submit) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert sorted(statuses) == [201] * 3 + [429] * 5
    assert runs_stored(engine) == 3
