"""Signed job tokens at the API (``SANDPIT_JOB_TOKEN_KEY_FILE``): made by the worker at the claim
without a row, they move their own job's files while that attempt runs and no longer, exactly as
row tokens do, with the same answers (401/403/409 before anything is stored). A real API
(uvicorn), a real database (SQLite and PostgreSQL) and Redis."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from api.settings import ApiSettings
from pipelines.store.db import make_engine, session_scope
from pipelines.store.job_tokens import sign_job_token
from pipelines.store.models import JobToken
from pipelines.store.transitions import claim_job
from tests.integration.api.conftest import (  # noqa: F401 - fixtures
    USER_TOKEN,
    create,
    engine,
    finish,
    jobs_of,
    rds,
    redis_url,
    serve_in_thread,
    settings,
)
from tests.integration.deploy.conftest import Deployment, deployment, hosts_root, redis  # noqa: F401 - fixtures

KEY, OTHER_KEY = b"k" * 48, b"z" * 48


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bundle(files: list[bytes], log: bytes) -> bytes:
    manifest = {"files": [[_sha(f), len(f)] for f in files], "log": [_sha(log), len(log)]}
    return json.dumps(manifest).encode() + b"\n" + b"".join(files) + log


@pytest.fixture
def signing(settings: ApiSettings) -> Iterator[tuple[httpx.Client, ApiSettings]]:  # noqa: F811
    keyed = dataclasses.replace(settings, job_token_keys=(KEY, OTHER_KEY))
    with serve_in_thread(keyed) as server, httpx.Client(base_url=server.url, timeout=20) as client:
        yield client, keyed


def _jobs(api: httpx.Client, engine: Engine) -> list[str]:  # noqa: F811
    api.headers["Authorization"] = f"Bearer {USER_TOKEN}"
    run = create(api)  # the two-job pipeline of the API tests
    del api.headers["Authorization"]
    return jobs_of(engine, run["id"])


def _claim(db: Engine, job_id: str) -> int:
    with session_scope(db) as session:
        job = claim_job(session, job_id, "host-a-1", dt.datetime.now(dt.UTC), lease_s=30)
        assert job is not None
        return job.attempt


def test_a_signed_token_moves_its_jobs_files_only_while_its_attempt_runs(
        signing: tuple[httpx.Client, ApiSettings], engine: Engine) -> None:  # noqa: F811
    """Signed with any of the API's keys, the token stores its job's bundle (no token row is
    written); another job's is 403, a forged or altered one 401, another attempt's 409; once the
    attempt is recorded the same token is 409 job_not_running and nothing of that request is
    kept."""
    api, settings_ = signing
    build, test = _jobs(api, engine)
    attempt = _claim(engine, build)
    token = sign_job_token(KEY, build, attempt)
    data, log = b"the build's output\n", b'{"t": 1.0, "s": "out", "d": "hi\\n"}\n'
    url = f"/api/v1/jobs/{build}/bundle"
    sent = api.put(url, content=_bundle([data], log), headers={"Authorization": f"Bearer {token}"})
    assert sent.status_code == 200, sent.text
    assert sent.json() == {"stored": 1, "kept": 0, "log": f"logs/{build}.jsonl", "services": []}
    assert (settings_.artifacts_dir / _sha(data)[:2] / _sha(data)).read_bytes() == data
    with session_scope(engine) as s:
        assert s.exec(select(JobToken)).all() == []
    rotated = sign_job_token(OTHER_KEY, build, attempt)  # the second key of the file is accepted too
    assert api.put(f"/api/v1/jobs/{build}/blobs/{_sha(data)}", content=data,
                   headers={"Authorization": f"Bearer {rotated}"}).status_code == 200

    other = api.put(f"/api/v1/jobs/{test}/bundle", content=_bundle([data], log),
                    headers={"Authorization": f"Bearer {token}"})
    assert other.status_code == 403 and other.json()["error"] == "forbidden"
    for forged in (sign_job_token(b"x" * 48, build, attempt), token[:-1] + ("A" if token[-1] != "A" else "B"),
                   token.replace(f".{attempt}.", f".{attempt + 1}.", 1)):
        refused = api.put(url, content=_bundle([data], log), headers={"Authorization": f"Bearer {forged}"})
        assert refused.status_code == 401 and refused.json()["error"] == "unauthenticated", forged
    later = sign_job_token(KEY, build, attempt + 1)  # signed right, but not the attempt that runs
    stale = api.put(url, content=_bundle([data], log), headers={"Authorization": f"Bearer {later}"})
    assert stale.status_code == 409 and stale.json()["error"] == "job_not_running"

    finish(engine, build, attempt, log=f"logs/{build}.jsonl")
    fresh = b"sent after the end\n"
    late = api.put(url, content=_bundle([fresh], log), headers={"Authorization": f"Bearer {token}"})
    assert late.status_code == 409 and late.json()["error"] == "job_not_running"
    assert not (settings_.artifacts_dir / _sha(fresh)[:2] / _sha(fresh)).exists()


def test_an_api_without_the_key_takes_no_signed_token(
        settings: ApiSettings, engine: Engine) -> None:  # noqa: F811
    """With no SANDPIT_JOB_TOKEN_KEY_FILE the API accepts row tokens only: a signed one is 401."""
    with serve_in_thread(settings) as server, httpx.Client(base_url=server.url, timeout=20) as api:
        build, _test = _jobs(api, engine)
        token = sign_job_token(KEY, build, _claim(engine, build))
        refused = api.put(f"/api/v1/jobs/{build}/bundle", content=_bundle([b"x"], b"{}\n"),
                          headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 401 and refused.json()["error"] == "unauthenticated"


ONE_JOB = 'job:\n  script: ["sleep 2", "mkdir -p out", "echo signed > out/a.txt"]\n  artifacts: {paths: [out]}\n'


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the database plays no part here
def test_a_worker_and_the_api_sharing_a_key_file_deliver_with_signed_tokens(
        deployment: Deployment) -> None:  # noqa: F811
    """A worker on a host of its own signs its job's token with the shared key: no token row is
    written while the job runs, and its artifact reaches the API and downloads from it."""
    keys = deployment.tmp / "job-token-keys"
    keys.write_bytes(KEY + b"\n")
    keys.chmod(0o600)
    deployment.start_api(SANDPIT_JOB_TOKEN_KEY_FILE=str(keys))
    deployment.http_worker(deployment.host("one"), SANDPIT_JOB_TOKEN_KEY_FILE=str(keys))
    run = deployment.submit(ONE_JOB)
    deployment.wait_for("the job running", lambda: deployment.run(run["id"])["jobs"][0]["status"] == "running")
    db = make_engine(deployment.db_url)
    try:
        with session_scope(db) as s:  # a row token's row lives while its attempt runs; a signed one has none
            assert s.exec(select(JobToken)).all() == []
    finally:
        db.dispose()
    ended = deployment.wait(run["id"], timeout=60)
    assert ended["status"] == "succeeded", ended["jobs"]
    with deployment.client() as c:
        assert c.get(f"/api/v1/jobs/{ended['jobs'][0]['id']}/artifacts/out/a.txt").text == "signed\n"
