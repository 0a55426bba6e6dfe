"""Who may see and do what in the UI, and the headers every page carries, through a real server.

The worker is played through the store (as in tests/integration/api): these tests are about the
web layer — sessions, CSRF, the CSP, downloads, visitors — not about running jobs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.engine import Engine

from api.settings import ApiSettings
from api.ui.passwords import hash_password
from api.ui.settings import LocalUser, UiSettings
from tests.integration.api.conftest import (
    TRUSTED_TOKEN,
    USER_TOKEN,
    claim,
    finish,
    serve_in_thread,
    write_log_file,
)

CSP_PARTS = ("default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'")


def login(c: httpx.Client, token: str) -> httpx.Response:
    c.get("/ui/login")
    nonce = c.cookies.get("sandpit_login")
    return c.post("/ui/login", data={"csrf": nonce, "method": "token", "token": token, "next": "/ui/runs"})


def csrf_of(c: httpx.Client, path: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', c.get(path).text)
    assert match, f"no CSRF field on {path}"
    return match.group(1)


def new_run(c: httpx.Client, pipeline: str = "solo:\n  script: [make]\n", **fields: object) -> dict[str, object]:
    response = c.post("/api/v1/runs", json={"pipeline": pipeline, **fields},
                      headers={"Authorization": f"Bearer {TRUSTED_TOKEN}"})
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


@pytest.fixture
def web(live: object) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=20, follow_redirects=False) as c:  # type: ignore[attr-defined]
        yield c


def test_every_page_needs_a_login_and_carries_a_strict_csp(web: httpx.Client) -> None:
    """Without a session: a redirect to the login form (which keeps where one was going);
    every answer, API included, has the CSP, nosniff and no framing."""
    response = web.get("/ui/runs?ref=main")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login?next=%2Fui%2Fruns%3Fref%3Dmain"
    for path in ("/ui/login", "/api/v1/docs", "/healthz", "/static/ui.css"):
        answer = web.get(path)
        assert answer.status_code == 200, path
        assert all(part in answer.headers["content-security-policy"] for part in CSP_PARTS), path
        assert answer.headers["x-content-type-options"] == "nosniff" and answer.headers["x-frame-options"] == "DENY"
    docs = web.get("/api/v1/docs").text
    assert "GET /api/v1/runs" in docs and not re.search(r"(src|href)=\"(https?:)?//", docs)
    assert "<script>" not in docs


def test_login_sets_a_signed_httponly_cookie_and_a_wrong_token_is_refused(web: httpx.Client) -> None:
    refused = login(web, "not-a-token")
    assert refused.status_code == 401 and "sandpit_session" not in refused.headers.get("set-cookie", "")
    accepted = login(web, USER_TOKEN)
    assert accepted.status_code == 303 and accepted.headers["location"] == "/ui/runs"
    cookie = accepted.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie  # plain http here
    assert USER_TOKEN not in cookie
    assert web.get("/ui/runs").status_code == 200
    web.cookies.set("sandpit_session", web.cookies["sandpit_session"][:-3] + "AAA")  # a forged signature
    assert web.get("/ui/runs").status_code == 303


def test_login_refuses_a_missing_csrf_nonce_and_offsite_targets(web: httpx.Client) -> None:
    web.get("/ui/login")
    missing = web.post("/ui/login", data={"method": "token", "token": USER_TOKEN})
    assert missing.status_code == 403
    nonce = web.cookies.get("sandpit_login")
    offsite = web.post("/ui/login", data={"csrf": nonce, "method": "token", "token": USER_TOKEN,
                                          "next": "//evil.example/x"})
    assert offsite.status_code == 303 and offsite.headers["location"] == "/ui/runs"


def test_state_changing_forms_need_the_session_csrf_token_and_the_same_origin(web: httpx.Client) -> None:
    """Cancel without the token, with a wrong one, or from another site: 403 and the run goes on;
    with the page's token: cancelled."""
    run = new_run(web)
    login(web, USER_TOKEN)
    path = f"/ui/runs/{run['id']}/cancel"
    token = csrf_of(web, f"/ui/runs/{run['id']}")
    assert web.post(path, data={}).status_code == 403
    assert web.post(path, data={"csrf": token + "x"}).status_code == 403
    assert web.post(path, data={"csrf": token}, headers={"Origin": "http://evil.example"}).status_code == 403
    assert web.post(path, data={"csrf": token}, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert web.post(path, json={"csrf": token}).status_code == 403  # only urlencoded forms
    assert web.get(f"/api/v1/runs/{run['id']}", headers={"Authorization": f"Bearer {USER_TOKEN}"}).json()[
        "cancelled"] is False
    done = web.post(path, data={"csrf": token})
    assert done.status_code == 303
    assert web.get(f"/api/v1/runs/{run['id']}", headers={"Authorization": f"Bearer {USER_TOKEN}"}).json()[
        "cancelled"] is True


def test_a_manual_job_is_played_and_a_run_is_retried_from_their_pages(web: httpx.Client, engine: Engine) -> None:
    run = new_run(web, "stages: [a, b]\nfirst:\n  stage: a\n  script: [x]\nlater:\n  stage: b\n  when: manual\n"
                       "  script: [y]\n", variables={"A": "1"}, secrets={"S": "hidden-value"})
    jobs = {j["name"]: j["id"] for j in run["jobs"]}  # type: ignore[attr-defined]
    finish(engine, jobs["first"], claim(engine, jobs["first"]))
    login(web, TRUSTED_TOKEN)
    page = web.get(f"/ui/runs/{run['id']}").text
    assert f'action="/ui/jobs/{jobs["later"]}/play"' in page and "hidden-value" not in page
    token = csrf_of(web, f"/ui/runs/{run['id']}")
    assert web.post(f"/ui/jobs/{jobs['later']}/play", data={"csrf": token}).status_code == 303
    auth = {"Authorization": f"Bearer {TRUSTED_TOKEN}"}
    assert web.get(f"/api/v1/jobs/{jobs['later']}", headers=auth).json()["status"] == "queued"
    again = web.post(f"/ui/runs/{run['id']}/retry", data={"csrf": token})
    assert again.status_code == 303
    new_id = again.headers["location"].rsplit("/", 1)[1]
    assert new_id != run["id"]
    copy = web.get(f"/api/v1/runs/{new_id}", headers=auth).json()
    assert copy["variables"] == {"A": "1"} and copy["trust"] == "trusted"


def test_a_finished_job_is_retried_from_its_box_and_its_page(web: httpx.Client, engine: Engine) -> None:
    """A finished job's box and page carry a Retry form (CSRF-checked); posting it queues the job
    again and returns to the page it came from; a job not finished offers none and is a 409 page."""
    run = new_run(web, "stages: [a, b]\nbuild:\n  stage: a\n  script: [x]\nlater:\n  stage: b\n  script: [y]\n")
    jobs = {j["name"]: j["id"] for j in run["jobs"]}  # type: ignore[attr-defined]
    finish(engine, jobs["build"], claim(engine, jobs["build"]), status="failed", reason="exit_code", exit_code=1)
    login(web, TRUSTED_TOKEN)
    page = web.get(f"/ui/runs/{run['id']}").text
    assert f'action="/ui/jobs/{jobs["build"]}/retry"' in page and f'action="/ui/jobs/{jobs["later"]}/retry"' not in page
    assert 'id="retry-job"' in web.get(f"/ui/jobs/{jobs['build']}").text
    token = csrf_of(web, f"/ui/runs/{run['id']}")
    assert web.post(f"/ui/jobs/{jobs['build']}/retry", data={"csrf": token + "x"}).status_code == 403
    done = web.post(f"/ui/jobs/{jobs['build']}/retry", data={"csrf": token, "back": "job"})
    assert done.status_code == 303 and done.headers["location"] == f"/ui/jobs/{jobs['build']}"
    auth = {"Authorization": f"Bearer {TRUSTED_TOKEN}"}
    assert web.get(f"/api/v1/jobs/{jobs['build']}", headers=auth).json()["status"] == "queued"
    assert web.get(f"/api/v1/jobs/{jobs['later']}", headers=auth).json()["status"] == "created"
    assert 'id="retry-job"' not in web.get(f"/ui/jobs/{jobs['build']}").text
    again = web.post(f"/ui/jobs/{jobs['build']}/retry", data={"csrf": token})
    assert again.status_code == 409 and "still queued" in again.text and "<html" in again.text


def test_an_untrusted_login_is_offered_no_play_or_retry_on_a_trusted_run(web: httpx.Client, engine: Engine) -> None:
    """A trusted run's jobs are started by trusted logins only: no buttons, and a 403 page."""
    run = new_run(web, "stages: [a, b]\nbuild:\n  stage: a\n  script: [x]\ngate:\n  stage: b\n  when: manual\n"
                       "  script: [y]\n")
    jobs = {j["name"]: j["id"] for j in run["jobs"]}  # type: ignore[attr-defined]
    finish(engine, jobs["build"], claim(engine, jobs["build"]))
    login(web, USER_TOKEN)
    page = web.get(f"/ui/runs/{run['id']}").text
    assert "/retry\"" not in page.replace(f"/ui/runs/{run['id']}/retry\"", "") and "/play\"" not in page
    token = csrf_of(web, f"/ui/runs/{run['id']}")
    assert web.post(f"/ui/jobs/{jobs['gate']}/play", data={"csrf": token}).status_code == 403
    assert web.post(f"/ui/jobs/{jobs['build']}/retry", data={"csrf": token}).status_code == 403


def test_artifacts_are_downloads_never_pages(web: httpx.Client, engine: Engine, settings: ApiSettings) -> None:
    """An HTML file a job kept comes as an attachment, octet-stream, nosniff; its name is escaped
    in the page."""
    content = b"<html><script>alert(1)</script></html>"
    sha = hashlib.sha256(content).hexdigest()
    blob = settings.artifacts_dir / sha[:2] / sha
    blob.parent.mkdir(parents=True)
    blob.write_bytes(content)
    run = new_run(web)
    job_id = str(run["jobs"][0]["id"])  # type: ignore[index]
    name = 'out/<b>"x".html'
    finish(engine, job_id, claim(engine, job_id), artifacts=[{"path": name, "size": len(content), "sha256": sha}])
    login(web, TRUSTED_TOKEN)
    page = web.get(f"/ui/jobs/{job_id}").text
    assert "out/&lt;b&gt;&#34;x&#34;.html" in page and '<b>"x"' not in page
    response = web.get(f"/ui/jobs/{job_id}/artifacts/{name}")
    assert response.status_code == 200 and response.content == content
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"].startswith("attachment;")
    assert response.headers["x-content-type-options"] == "nosniff"
    archive = web.get(f"/ui/jobs/{job_id}/artifacts.zip")
    assert archive.status_code == 200 and archive.headers["content-disposition"].startswith("attachment;")
    assert web.get(f"/ui/jobs/{job_id}/artifacts/nope").status_code == 404


def test_a_job_log_page_escapes_and_downloads(web: httpx.Client, engine: Engine, settings: ApiSettings) -> None:
    run = new_run(web)
    job_id = str(run["jobs"][0]["id"])  # type: ignore[index]
    log = write_log_file(settings.state_dir / "logs" / f"{job_id}.jsonl",
                         [("out", "<script>alert(1)</script>\n"), ("out", "\x1b[32mgreen\x1b[0m\x1b]0;t\x07\n")])
    finish(engine, job_id, claim(engine, job_id), log=log)
    from pipelines.store.db import session_scope
    from pipelines.store.models import Job

    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.log_path = log
    login(web, USER_TOKEN)
    page = web.get(f"/ui/jobs/{job_id}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert '<span class="f2">green</span>' in page and "\x1b" not in page
    download = web.get(f"/ui/jobs/{job_id}/log.txt")
    assert download.headers["content-disposition"].startswith("attachment;")
    assert download.text == "<script>alert(1)</script>\n\x1b[32mgreen\x1b[0m\x1b]0;t\x07\n"
    assert web.get(f"/ui/jobs/{job_id}?at=3").status_code == 400  # not where an entry begins


def test_visitors_read_only_and_untrusted_logs_per_setting(settings: ApiSettings, engine: Engine) -> None:
    """SANDPIT_UI_VISITORS=read: runs are readable without a login, no form is offered, a POST
    still needs one; untrusted runs' logs stay behind a login (SANDPIT_UI_UNTRUSTED_LOGS=user)."""
    user = LocalUser("ann", hash_password("ann-password"), admin=False)
    open_ui = dataclasses.replace(settings, ui=UiSettings(visitors="read", users=(user,)))
    with serve_in_thread(open_ui) as server, httpx.Client(base_url=server.url, follow_redirects=False) as c:
        untrusted = c.post("/api/v1/runs", json={"pipeline": "solo:\n  script: [make]\n"},
                           headers={"Authorization": f"Bearer {USER_TOKEN}"}).json()
        job_id = untrusted["jobs"][0]["id"]
        assert c.get("/ui/runs").status_code == 200
        page = c.get(f"/ui/runs/{untrusted['id']}")
        assert page.status_code == 200 and "cancel" not in page.text.lower()
        assert "shown to signed-in users only" in c.get(f"/ui/jobs/{job_id}").text
        assert c.get(f"/ui/jobs/{job_id}/log.txt").status_code == 403
        assert c.post(f"/ui/runs/{untrusted['id']}/cancel", data={}).status_code == 303  # to the login
        assert c.get("/ui/repos").status_code == 303
        c.get("/ui/login")
        nonce = c.cookies.get("sandpit_login")
        wrong = c.post("/ui/login", data={"csrf": nonce, "method": "user", "name": "ann", "password": "nope"})
        assert wrong.status_code == 401
        right = c.post("/ui/login", data={"csrf": nonce, "method": "user", "name": "ann", "password": "ann-password"})
        assert right.status_code == 303
        assert "shown to signed-in" not in c.get(f"/ui/jobs/{job_id}").text
        assert c.get("/ui/repos").status_code == 403  # a user, not an admin
