"""``GET /api/v1/runs`` and ``/api/v1/repos/{id}/runs`` through a real server and database."""

from __future__ import annotations

import datetime as dt

import httpx
from sqlalchemy.engine import Engine

from pipelines.store import repos as repo_store
from pipelines.store.db import session_scope
from tests.integration.api.conftest import PIPELINE, TRUSTED_TOKEN


def create(client: httpx.Client, **fields: object) -> dict[str, object]:
    response = client.post("/api/v1/runs", json={"pipeline": PIPELINE, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def _link(engine: Engine, run_id: str, name: str = "acme/app") -> str:
    with session_scope(engine) as session:
        try:
            repo = repo_store.get_repository(session, name)
        except repo_store.RepositoryNotFound:
            repo = repo_store.add_repository(session, repo_store.NewRepository(
                name=name, forge="gitea", clone_url="http://127.0.0.1:9/x.git", secret_sealed="x"),
                dt.datetime.now(dt.UTC))
        repo_store.link_run(session, run_id, repo.id, "push", "main", None, False)
        return repo.id


def test_runs_are_listed_newest_first_in_keyed_pages(client: httpx.Client) -> None:
    """Five runs, pages of two: every run once, newest first, and the last page has no `next`."""
    made = [create(client, message=f"commit {i}\n\nbody")["id"] for i in range(5)]
    seen: list[str] = []
    page = client.get("/api/v1/runs", params={"limit": 2}).json()
    while True:
        seen += [r["id"] for r in page["runs"]]
        assert len(page["runs"]) <= 2
        if page["next"] is None:
            break
        page = client.get("/api/v1/runs", params={"limit": 2, "before": page["next"]}).json()
    assert seen == list(reversed(made))
    first = client.get("/api/v1/runs", params={"limit": 1}).json()["runs"][0]
    assert first["title"] == "commit 4" and first["trigger"] == "token user" and first["duration_s"] is None


def test_filters_by_ref_status_source_and_time(client: httpx.Client, engine: Engine) -> None:
    """Each filter narrows the list to exactly the runs it names."""
    a = create(client, ref="main")["id"]
    b = create(client, ref="feature/x")["id"]
    client.post(f"/api/v1/runs/{b}/cancel")
    def ids(**params: object) -> list[str]:
        response = client.get("/api/v1/runs", params=params)
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()["runs"]]
    assert ids(ref="feature/x") == [b]
    assert ids(status="cancelled") == [b]
    assert set(ids(status="cancelled,running")) == {a, b}
    assert ids(source="cli") == []
    assert set(ids(source="api")) == {a, b}
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    assert ids(created_since=future) == []
    assert set(ids(created_since="2000-01-01")) == {a, b}


def test_repository_filter_and_repository_runs(client: httpx.Client, engine: Engine) -> None:
    """A run linked to a repository is found by the repository's id or name, and under its URL."""
    linked = create(client)["id"]
    create(client)
    repo_id = _link(engine, linked)
    assert [r["id"] for r in client.get("/api/v1/runs", params={"repository": "acme/app"}).json()["runs"]] == [linked]
    assert [r["id"] for r in client.get("/api/v1/runs", params={"repository": repo_id}).json()["runs"]] == [linked]
    body = client.get(f"/api/v1/repos/{repo_id}/runs").json()
    assert [r["id"] for r in body["runs"]] == [linked]
    assert body["runs"][0]["repository"] == "acme/app" and body["runs"][0]["trigger"] == "push"
    missing = client.get("/api/v1/repos/nope/runs")
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_repository"


def test_a_repositorys_runs_come_in_keyed_pages_newest_first(client: httpx.Client, engine: Engine) -> None:
    """A repository's runs, between other repositories' and unlinked ones, read from its links
    (revision 0013): every run once, newest first, pages of two, with a status filter of two
    values too; an unknown repository's list is empty."""
    mine: list[str] = []
    for i in range(5):
        run_id = create(client, message=f"mine {i}")["id"]
        _link(engine, run_id)
        mine.append(run_id)
        _link(engine, create(client)["id"], name="acme/other")
        create(client)
    client.post(f"/api/v1/runs/{mine[1]}/cancel")
    for params in ({"repository": "acme/app"}, {"repository": "acme/app", "status": "running,cancelled"}):
        seen: list[str] = []
        page = client.get("/api/v1/runs", params={**params, "limit": 2}).json()
        while True:
            seen += [r["id"] for r in page["runs"]]
            assert len(page["runs"]) <= 2 and all(r["repository"] == "acme/app" for r in page["runs"])
            if page["next"] is None:
                break
            page = client.get("/api/v1/runs", params={**params, "limit": 2, "before": page["next"]}).json()
        assert seen == list(reversed(mine)), params
    assert client.get("/api/v1/runs", params={"repository": "nobody/nothing"}).json()["runs"] == []


def test_bad_filters_get_a_precise_400(client: httpx.Client) -> None:
    """An unknown status, a bad time, a forged cursor: 400 naming the value, no traceback."""
    cases = {"status": "bogus", "source": "ftp", "created_since": "yesterday", "before": "not-a-cursor"}
    for name, value in cases.items():
        response = client.get("/api/v1/runs", params={name: value})
        assert response.status_code == 400, (name, response.text)
        assert response.json()["error"] == "bad_request" and value in response.json()["message"]
    assert client.get("/api/v1/runs", params={"limit": 0}).status_code == 400


def test_listing_needs_a_token_and_shows_no_secrets(anon: httpx.Client, client: httpx.Client) -> None:
    """Without a bearer token: 401; with one, a run's secrets are in no field of the list."""
    assert anon.get("/api/v1/runs").status_code == 401
    response = client.post("/api/v1/runs", json={"pipeline": "solo:\n  script: [make]\n",
                                                 "secrets": {"TOKEN": "s3cret-value"}, "variables": {"A": "1"}})
    assert response.status_code == 201
    listing = httpx.get(f"{client.base_url}/api/v1/runs", headers={"Authorization": f"Bearer {TRUSTED_TOKEN}"})
    assert listing.status_code == 200 and "s3cret-value" not in listing.text
