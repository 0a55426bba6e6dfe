"""``POST /api/v1/runs`` with a source, through the real app (uvicorn on loopback, SQLite and
PostgreSQL, a git daemon on loopback): a registered repository's commit by sha or ref, an
uploaded tree, and every refusal with its own status."""

from __future__ import annotations

import base64
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from pipelines.store.db import make_engine, read_scope
from pipelines.store.reads import planned_jobs
from pipelines.store.sources import archive_bytes, run_source
from tests.integration.api.conftest import USER_TOKEN, LiveServer
from tests.integration.forges.gitserver import GitServer
from worker.work_tree import tree_archive, tree_files


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def user(api: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {USER_TOKEN}"}, timeout=60) as c:
        yield c


def _tar(entries: dict[str, str]) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_repository_commit_by_sha_or_ref(admin: httpx.Client, user: httpx.Client, git: GitServer,
                                           engine: Engine) -> None:
    """A run of a registered repository's commit reads the pipeline (and its include) from the
    commit, records the commit for the worker, and stays the caller's trust level."""
    git.create("app")
    first = git.commit("app", {".gitlab-ci.yml": "include: ci/more.yml\nt: {script: [make]}\n",
                               "ci/more.yml": "u: {script: [make check]}\n"}, "first")
    second = git.commit("app", {"ci/more.yml": "v: {script: [make lint]}\n"}, "second")
    assert admin.post("/api/v1/repos", json={"name": "acme/app", "forge": "github", "clone_url": git.url("app"),
                                             "secret": "s" * 20}).status_code == 201
    by_sha = user.post("/api/v1/runs", json={"source": {"repository": "acme/app", "sha": first}})
    assert by_sha.status_code == 201, by_sha.text
    run = by_sha.json()
    assert (run["sha"], run["trust"], sorted(j["name"] for j in run["jobs"])) == (first, "untrusted", ["t", "u"])
    by_ref = user.post("/api/v1/runs", json={"source": {"repository": "acme/app", "ref": "main"}})
    assert by_ref.status_code == 201, by_ref.text
    assert by_ref.json()["sha"] == second and sorted(j["name"] for j in by_ref.json()["jobs"]) == ["t", "v"]
    with read_scope(engine) as session:
        recorded = run_source(session, run["id"])
        assert recorded is not None and (recorded.kind, recorded.sha, recorded.clone_url) == (
            "commit", first, git.url("app"))
        env = {job.name: job.env() for job in planned_jobs(session, run["id"])}
    assert env["t"]["CI_COMMIT_SHA"] == first and env["t"]["CI_PIPELINE_SOURCE"] == "api"
    assert env["t"]["CI_COMMIT_TITLE"] == "first"
    missing = user.post("/api/v1/runs", json={"source": {"repository": "no/such"}})
    assert (missing.status_code, missing.json()["error"]) == (404, "unknown_repository")
    no_ref = user.post("/api/v1/runs", json={"source": {"repository": "acme/app", "ref": "nope"}})
    assert (no_ref.status_code, no_ref.json()["error"]) == (502, "fetch_failed")


def test_an_uploaded_tree(user: httpx.Client, api_settings: object, engine: Engine, tmp_path: Path) -> None:
    """A work tree packed as `sandpit submit` packs it: the pipeline's local include is read from
    the archive, which is stored once for the worker."""
    (tmp_path / "ci").mkdir()
    (tmp_path / ".gitlab-ci.yml").write_text("include: ci/*.yml\nt: {script: [make]}\n")
    (tmp_path / "ci" / "lint.yml").write_text("lint: {script: [ruff]}\n")
    (tmp_path / "link").symlink_to("ci/lint.yml")
    archive = tree_archive(tmp_path, tree_files(tmp_path))
    answer = user.post("/api/v1/runs", json={"source": {"archive": base64.b64encode(archive).decode()}})
    assert answer.status_code == 201, answer.text
    run = answer.json()
    assert sorted(j["name"] for j in run["jobs"]) == ["lint", "t"]
    with read_scope(engine) as session:
        recorded = run_source(session, run["id"])
        assert recorded is not None and recorded.kind == "archive"
        assert archive_bytes(session, recorded.archive_sha256 or "") == archive
    given = user.post("/api/v1/runs", json={"pipeline": "only: {script: [x]}", "source": {"archive": _tar({})}})
    assert given.status_code == 201 and [j["name"] for j in given.json()["jobs"]] == ["only"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("body", "status", "error"), [
    ({"source": {"archive": "not base64!"}}, 400, "bad_request"),
    ({"source": {"archive": _tar({"../etc/cron.d/x": "boom"})}}, 422, "bad_source"),
    ({"source": {"archive": _tar({"README": "no pipeline"})}}, 422, "bad_source"),
    ({"source": {"archive": _tar({".gitlab-ci.yml": "t: {scirpt: [x]}"})}}, 422, "invalid_pipeline"),
    ({"source": {"archive": _tar({}), "repository": "acme/app"}}, 400, "bad_request"),
    ({"source": {"archive": base64.b64encode(b"x" * 300_000).decode()}}, 413, "body_too_large"),
])
def test_refused_sources(user: httpx.Client, body: dict, status: int, error: str) -> None:
    """Each unusable source is refused with its own status and code, and creates nothing."""
    answer = user.post("/api/v1/runs", json=body)
    assert (answer.status_code, answer.json()["error"]) == (status, error), answer.text


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sandpit_submit_sends_the_work_tree(api: LiveServer, engine: Engine, tmp_path: Path) -> None:
    """`sandpit submit` from a git work tree sends its tracked and untracked-but-not-ignored files
    (never the ignored ones), with the file's path as the entry, so its include resolves; with
    --no-tree it sends the file alone."""
    import subprocess
    import sys

    from tests.integration.forges.gitserver import git

    work = tmp_path / "work"
    (work / "ci").mkdir(parents=True)
    git(work, "init", "-q")
    (work / ".gitignore").write_text("secret.env\n")
    (work / "secret.env").write_text("TOKEN=do-not-send\n")
    (work / "ci" / "pipeline.yml").write_text("include: ci/more.yml\nt: {script: [make]}\n")
    (work / "ci" / "more.yml").write_text("u: {script: [make check]}\n")
    git(work, "add", ".gitignore", "ci/pipeline.yml")
    env = {"PATH": os.environ["PATH"], "SANDPIT_API_URL": api.url, "SANDPIT_TOKEN": USER_TOKEN,
           "SANDPIT_STATE_DIR": str(tmp_path / "cli")}
    sent = subprocess.run([sys.executable, "-m", "worker", "submit", str(work / "ci" / "pipeline.yml")], env=env,
                          cwd=Path(__file__).resolve().parents[3], capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr
    run_id = sent.stdout.split()[1].rstrip(":")
    with read_scope(engine) as session:
        recorded = run_source(session, run_id)
        assert recorded is not None and recorded.kind == "archive"
        data = archive_bytes(session, recorded.archive_sha256 or "")
        jobs = sorted(job.name for job in planned_jobs(session, run_id))
    assert jobs == ["t", "u"]
    with tarfile.open(fileobj=io.BytesIO(data or b""), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == [".gitignore", "ci/more.yml", "ci/pipeline.yml"]
    alone = subprocess.run([sys.executable, "-m", "worker", "submit", "--no-tree", str(work / "ci" / "pipeline.yml")],
                           env=env, cwd=Path(__file__).resolve().parents[3], capture_output=True, text=True,
                           timeout=120)
    assert alone.returncode != 0 and "include" in alone.stderr  # its include is not in the repository it names
