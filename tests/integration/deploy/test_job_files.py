"""The API's end of the http transport: a job token moves its own job's files while that attempt
runs and no longer; every body is checked against the sha256 it names; a job fetches only its
run's artifacts and its trust level's caches. A real API (uvicorn), real database and Redis."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from api.settings import ApiSettings
from pipelines.store.db import session_scope
from pipelines.store.job_tokens import mint_job_token
from pipelines.store.retention import cache_store
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

PIPELINE = """\
stages: [build, test]
build:
  stage: build
  script: [make]
  artifacts: {paths: [dist]}
test:
  stage: test
  script: [make check]
"""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _claim(db: Engine, job_id: str) -> tuple[int, str]:
    """Claim as a worker does, minting the token in the claim's transaction."""
    with session_scope(db) as session:
        job = claim_job(session, job_id, "host-a-1", _now(), lease_s=30)
        assert job is not None
        return job.attempt, mint_job_token(session, job_id, job.attempt, "host-a-1", _now())


@pytest.fixture
def api(settings: ApiSettings) -> Iterator[httpx.Client]:  # noqa: F811
    with serve_in_thread(settings) as server, httpx.Client(base_url=server.url, timeout=20) as c:
        yield c


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _run(api: httpx.Client, engine: Engine) -> list[str]:  # noqa: F811
    api.headers["Authorization"] = f"Bearer {USER_TOKEN}"
    run = create(api, PIPELINE)
    del api.headers["Authorization"]
    return jobs_of(engine, run["id"])


def test_a_job_token_uploads_its_files_checked_and_only_while_its_attempt_runs(
        api: httpx.Client, engine: Engine, settings: ApiSettings) -> None:  # noqa: F811
    """201 for a new file, 200 for one stored already, 422 for a body that is not the named
    bytes (nothing stored), 400 for a name that is not a sha256; once the attempt is recorded the
    same token gets 409 job_not_running; another job's token 403; an API token or none 401."""
    build, test = _run(api, engine)
    attempt, token = _claim(engine, build)
    data = b"the build's output\n"
    sha = _sha(data)
    first = api.put(f"/api/v1/jobs/{build}/blobs/{sha}", content=data, headers=_bearer(token))
    again = api.put(f"/api/v1/jobs/{build}/blobs/{sha}", content=data, headers=_bearer(token))
    assert (first.status_code, again.status_code) == (201, 200), first.text
    assert (settings.artifacts_dir / sha[:2] / sha).read_bytes() == data

    lie = _sha(b"something else")
    wrong = api.put(f"/api/v1/jobs/{build}/blobs/{lie}", content=data, headers=_bearer(token))
    assert wrong.status_code == 422 and wrong.json()["error"] == "digest_mismatch"
    assert not (settings.artifacts_dir / lie[:2] / lie).exists()
    assert list((settings.artifacts_dir / lie[:2]).glob("*")) == [] if (settings.artifacts_dir / lie[:2]).exists() \
        else True
    bad = api.put(f"/api/v1/jobs/{build}/blobs/..%2f..%2fetc", content=data, headers=_bearer(token))
    assert bad.status_code in (400, 404)
    assert api.put(f"/api/v1/jobs/{build}/blobs/{'A' * 64}", content=data, headers=_bearer(token)).status_code == 400

    other = api.put(f"/api/v1/jobs/{test}/blobs/{sha}", content=data, headers=_bearer(token))
    assert other.status_code == 403 and other.json()["error"] == "forbidden"
    for headers in ({}, _bearer(USER_TOKEN), _bearer("spj_made-up")):
        refused = api.put(f"/api/v1/jobs/{build}/blobs/{sha}", content=data, headers=headers)
        assert refused.status_code == 401 and refused.json()["error"] == "unauthenticated"

    log_bytes = b'{"t": 1.0, "s": "out", "d": "hello\\n"}\n'
    no_sum = api.put(f"/api/v1/jobs/{build}/log", content=log_bytes, headers=_bearer(token))
    assert no_sum.status_code == 400
    stored = api.put(f"/api/v1/jobs/{build}/log", content=log_bytes,
                     headers={**_bearer(token), "X-Content-SHA256": _sha(log_bytes)})
    assert stored.status_code == 201 and stored.json()["log"] == f"logs/{build}.jsonl"
    assert (settings.state_dir / "logs" / f"{build}.jsonl").read_bytes() == log_bytes

    finish(engine, build, attempt, artifacts=[{"path": "dist/out", "size": len(data), "sha256": sha}],
           log=f"logs/{build}.jsonl")
    late = api.put(f"/api/v1/jobs/{build}/blobs/{sha}", content=data, headers=_bearer(token))
    assert late.status_code == 409 and late.json()["error"] == "job_not_running"
    # the log it uploaded is the one the API serves for the job
    api.headers["Authorization"] = f"Bearer {USER_TOKEN}"
    assert api.get(f"/api/v1/jobs/{build}/log").text == "hello\n"


def test_a_job_fetches_its_runs_artifacts_and_its_levels_caches_only(
        api: httpx.Client, engine: Engine, settings: ApiSettings) -> None:  # noqa: F811
    """The dependent job's token fetches the build's artifact (checked bytes, X-Content-SHA256);
    a file of no artifact of its run is 404; a cache manifest of its trust level and a file it
    lists are served, those of the other trust level are not."""
    build, test = _run(api, engine)
    attempt, token = _claim(engine, build)
    data = b"dist bytes"
    sha = _sha(data)
    assert api.put(f"/api/v1/jobs/{build}/blobs/{sha}", content=data, headers=_bearer(token)).status_code == 201
    cached = b"cached file"
    manifest = json.dumps([{"path": "deps/x", "size": len(cached), "sha256": _sha(cached)}]).encode()
    stray = b"not anybody's artifact"
    for body in (cached, manifest, stray):
        assert api.put(f"/api/v1/jobs/{build}/blobs/{_sha(body)}", content=body,
                       headers=_bearer(token)).status_code == 201
    finish(engine, build, attempt, artifacts=[{"path": "dist/out", "size": len(data), "sha256": sha}])
    with session_scope(engine) as session:  # an untrusted run's cache (API runs with a user token are untrusted)
        cache_store(session, "deps", "untrusted", _sha(manifest), len(cached), _now())
        cache_store(session, "other", "trusted", _sha(stray), len(stray), _now())

    _attempt, test_token = _claim(engine, test)
    got = api.get(f"/api/v1/jobs/{test}/blobs/{sha}", headers=_bearer(test_token))
    assert got.status_code == 200 and got.content == data and got.headers["x-content-sha256"] == sha
    assert api.get(f"/api/v1/jobs/{test}/blobs/{_sha(manifest)}", headers=_bearer(test_token)).content == manifest
    listed = api.get(f"/api/v1/jobs/{test}/blobs/{_sha(cached)}", params={"cache": _sha(manifest)},
                     headers=_bearer(test_token))
    assert listed.status_code == 200 and listed.content == cached
    assert api.get(f"/api/v1/jobs/{test}/blobs/{_sha(cached)}", headers=_bearer(test_token)).status_code == 404
    # a trusted cache's manifest is not for an untrusted job, nor any file a job of its run did not keep
    assert api.get(f"/api/v1/jobs/{test}/blobs/{_sha(stray)}", headers=_bearer(test_token)).status_code == 404
    assert api.get(f"/api/v1/jobs/{build}/blobs/{sha}", headers=_bearer(token)).status_code == 409


def test_a_damaged_stored_file_is_not_served(api: httpx.Client, engine: Engine, settings: ApiSettings) -> None:  # noqa: F811
    """A stored file whose bytes no longer hash to its name is 404 to a fetching worker, never sent."""
    build, test = _run(api, engine)
    attempt, token = _claim(engine, build)
    data = b"good bytes"
    sha = _sha(data)
    assert api.put(f"/api/v1/jobs/{build}/blobs/{sha}", content=data, headers=_bearer(token)).status_code == 201
    finish(engine, build, attempt, artifacts=[{"path": "dist/out", "size": len(data), "sha256": sha}])
    path: Path = settings.artifacts_dir / sha[:2] / sha
    path.write_bytes(b"evil bytes")
    _attempt, test_token = _claim(engine, test)
    assert api.get(f"/api/v1/jobs/{test}/blobs/{sha}", headers=_bearer(test_token)).status_code == 404


def _bundle(files: list[bytes], log: bytes | None, lie: dict[int, str] | None = None,
            services: dict[int, bytes] | None = None) -> bytes:
    names = [(lie or {}).get(i, _sha(f)) for i, f in enumerate(files)]
    manifest: dict[str, object] = {"files": [[n, len(f)] for n, f in zip(names, files, strict=True)],
                                   "log": [_sha(log), len(log)] if log is not None else None}
    if services is not None:
        manifest["services"] = [[i, _sha(b), len(b)] for i, b in services.items()]
    return (json.dumps(manifest).encode() + b"\n" + b"".join(files) + b"".join((services or {}).values())
            + (log or b""))


def test_a_bundle_carries_small_files_and_the_log_each_checked(
        api: httpx.Client, engine: Engine, settings: ApiSettings) -> None:  # noqa: F811
    """One request stores every file under its name and the log as the job's; a manifest that is
    not JSON, a size that does not add up, or a name that is not a sha256 is 400 and stores
    nothing; a file whose bytes are not the named ones is 422 and the log is not stored."""
    build, _test = _run(api, engine)
    _attempt, token = _claim(engine, build)
    files, log = [b"one", b"two" * 100], b'{"t": 1.0, "s": "out", "d": "hi\\n"}\n'
    url = f"/api/v1/jobs/{build}/bundle"
    for bad in (b"not json\n" + files[0], _bundle(files, log)[:-1], b'{"files": [["x", 3]], "log": null}\nabc',
                b'{"files": [], "log": null}', b'{"files": [[' + _sha(b"a").encode() + b'", true]], "log": null}\na'):
        refused = api.put(url, content=bad, headers=_bearer(token))
        assert refused.status_code == 400 and refused.json()["error"] == "bad_request", (bad, refused.text)
    lie = api.put(url, content=_bundle(files, log, {1: _sha(b"other")}), headers=_bearer(token))
    assert lie.status_code == 422 and lie.json()["error"] == "digest_mismatch"
    assert not (settings.state_dir / "logs" / f"{build}.jsonl").exists()
    assert not (settings.artifacts_dir / _sha(b"other")[:2] / _sha(b"other")).exists()

    good = api.put(url, content=_bundle(files, log), headers=_bearer(token))
    assert good.status_code == 200, good.text
    assert good.json() == {"stored": 1, "kept": 1, "log": f"logs/{build}.jsonl",  # "one" was stored by the 422 try
                           "services": []}
    for data in files:
        assert (settings.artifacts_dir / _sha(data)[:2] / _sha(data)).read_bytes() == data
    assert (settings.state_dir / "logs" / f"{build}.jsonl").read_bytes() == log
    assert api.put(url, content=_bundle(files, None), headers=_bearer("spj_nope")).status_code == 401


def _entries(*lines: str) -> bytes:
    return b"".join(json.dumps({"t": 1.0, "s": "out", "d": line}).encode() + b"\n" for line in lines)


def test_services_logs_travel_in_the_bundle_and_the_api_serves_them(
        api: httpx.Client, engine: Engine, settings: ApiSettings) -> None:  # noqa: F811
    """A bundle's services' logs are kept as ``logs/<job>.svc<N>.jsonl`` (each checked like a file:
    a lie is 422 and keeps nothing), a big one comes alone with PUT .../services/N/log; an API
    token reads each as text at GET .../services/N/log; an index no job can have is 400, a
    service with no log 404, and a symlink planted under a service log's name is not followed."""
    build, _test = _run(api, engine)
    attempt, token = _claim(engine, build)
    url = f"/api/v1/jobs/{build}/bundle"
    db_log, log = _entries("database system is ready\n"), _entries("job output\n")
    lie = json.dumps({"files": [], "services": [[0, _sha(b"other"), len(db_log)]], "log": None}).encode()
    refused = api.put(url, content=lie + b"\n" + db_log, headers=_bearer(token))
    assert refused.status_code == 422 and not (settings.state_dir / "logs" / f"{build}.svc0.jsonl").exists()
    twice = json.dumps({"files": [], "services": [[0, _sha(db_log), len(db_log)]] * 2, "log": None}).encode()
    assert api.put(url, content=twice + b"\n" + db_log * 2, headers=_bearer(token)).status_code == 400

    sent = api.put(url, content=_bundle([], log, services={0: db_log}), headers=_bearer(token))
    assert sent.status_code == 200, sent.text
    assert sent.json()["services"] == [f"logs/{build}.svc0.jsonl"] and sent.json()["log"] == f"logs/{build}.jsonl"
    web_log = _entries("GET / 200\n") * 3
    alone = api.put(f"/api/v1/jobs/{build}/services/1/log", content=web_log,
                    headers={**_bearer(token), "X-Content-SHA256": _sha(web_log)})
    assert alone.status_code == 201 and alone.json()["log"] == f"logs/{build}.svc1.jsonl"
    assert api.put(f"/api/v1/jobs/{build}/services/100/log", content=web_log,
                   headers={**_bearer(token), "X-Content-SHA256": _sha(web_log)}).status_code == 400
    services = [{"name": "postgres", "alias": "db", "log": f"logs/{build}.svc0.jsonl", "ready": True, "waited_s": 0.1},
                {"name": "python", "alias": "web", "log": f"logs/{build}.svc1.jsonl", "ready": True, "waited_s": 0.1},
                {"name": "redis", "alias": "cache", "log": f"logs/{build}.svc2.jsonl", "ready": None, "waited_s": 0}]
    finish(engine, build, attempt, log=f"logs/{build}.jsonl", services=services)
    (settings.state_dir / "logs" / f"{build}.svc2.jsonl").symlink_to(settings.state_dir / "logs" / f"{build}.jsonl")

    api.headers["Authorization"] = f"Bearer {USER_TOKEN}"
    got = api.get(f"/api/v1/jobs/{build}/services/0/log")
    assert got.status_code == 200 and got.text == "database system is ready\n"
    assert got.headers["content-type"].startswith("text/plain")
    assert api.get(f"/api/v1/jobs/{build}/services/1/log").text == "GET / 200\n" * 3
    planted = api.get(f"/api/v1/jobs/{build}/services/2/log")
    assert planted.status_code == 404 and planted.json()["error"] == "not_found"
    assert api.get(f"/api/v1/jobs/{build}/services/3/log").status_code == 404
    assert api.get(f"/api/v1/jobs/{build}/services/-1/log").status_code == 400
    assert api.get(f"/api/v1/jobs/{build}/services/x/log").status_code in (400, 422)
    del api.headers["Authorization"]
    assert api.get(f"/api/v1/jobs/{build}/services/0/log").status_code == 401
