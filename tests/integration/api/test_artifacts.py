"""Artifact listing and download: only recorded paths, content from the content-addressed store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from api.settings import ApiSettings
from tests.integration.api.conftest import claim, create, finish

CONTENT = b"\x00binary artifact content\n" * 10


def store_blob(settings: ApiSettings, content: bytes) -> str:
    sha = hashlib.sha256(content).hexdigest()
    path = settings.artifacts_dir / sha[:2] / sha
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return sha


@pytest.fixture
def job_with_artifacts(client: httpx.Client, engine: Engine, settings: ApiSettings) -> str:
    job_id: str = create(client, "solo:\n  script: [make]\n  artifacts: {paths: [dist/]}\n")["jobs"][0]["id"]
    sha = store_blob(settings, CONTENT)
    # a secret file next to the store, which a traversal would try to reach
    (settings.state_dir / "secret.txt").write_text("do not serve")
    finish(
        engine, job_id, claim(engine, job_id),
        artifacts=[
            {"path": "dist/app.tar", "size": len(CONTENT), "sha256": sha},
            {"path": "dist/gone.txt", "size": 3, "sha256": "0" * 64},
        ],
        rejected_artifacts=[{"path": "dist/link", "why": "symlink"}],
    )
    return job_id


def test_list_shows_path_size_and_sha(client: httpx.Client, job_with_artifacts: str) -> None:
    """The list has every recorded artifact; the job record has them and the rejected ones."""
    response = client.get(f"/api/v1/jobs/{job_with_artifacts}/artifacts")
    assert response.status_code == 200
    listed = response.json()["artifacts"]
    assert [(a["path"], a["size"]) for a in listed] == [("dist/app.tar", len(CONTENT)), ("dist/gone.txt", 3)]
    assert listed[0]["sha256"] == hashlib.sha256(CONTENT).hexdigest()
    record = client.get(f"/api/v1/jobs/{job_with_artifacts}").json()
    assert record["artifacts"] == listed
    assert record["rejected_artifacts"] == [{"path": "dist/link", "why": "symlink"}]


def test_download_serves_the_stored_bytes(client: httpx.Client, job_with_artifacts: str) -> None:
    response = client.get(f"/api/v1/jobs/{job_with_artifacts}/artifacts/dist/app.tar")
    assert response.status_code == 200
    assert response.content == CONTENT
    assert response.headers["content-type"] == "application/octet-stream"
    assert 'filename="app.tar"' in response.headers["content-disposition"]


@pytest.mark.parametrize(
    "path",
    [
        "dist/missing.tar",
        "dist/app.tar/",
        "dist//app.tar",
        "..%2fsecret.txt",
        "..%2F..%2Fsecret.txt",
        "%2e%2e/%2e%2e/secret.txt",
        "dist/..%2f..%2fsecret.txt",
        "%2fetc%2fpasswd",
        "dist/gone.txt",  # recorded, but its content is no longer stored
    ],
)
def test_unknown_paths_and_traversal_attempts_are_404(
    client: httpx.Client, job_with_artifacts: str, path: str
) -> None:
    """Only a recorded path with stored content is served; anything else is a JSON 404."""
    response = client.get(f"/api/v1/jobs/{job_with_artifacts}/artifacts/{path}")
    assert response.status_code == 404, response.text
    assert response.json()["error"] == "not_found"
    assert b"do not serve" not in response.content


def test_artifacts_of_an_unknown_job_are_404(client: httpx.Client, tmp_path: Path) -> None:
    assert client.get("/api/v1/jobs/unknown/artifacts/dist/app.tar").status_code == 404


def corrupt_in_place(settings: ApiSettings, sha: str) -> None:
    """Change some bytes of the stored file without changing its size (a torn or tampered file)."""
    with open(settings.artifacts_dir / sha[:2] / sha, "r+b") as f:
        f.write(b"EVIL")


def assert_refused_as_corrupt(response: httpx.Response) -> None:
    assert response.status_code == 500, response.text
    assert response.json()["error"] == "artifact_corrupt"
    assert "does not match its recorded sha256" in response.json()["message"]
    assert CONTENT not in response.content and b"EVIL" not in response.content


def test_corrupted_stored_file_is_never_served(
    client: httpx.Client, job_with_artifacts: str, settings: ApiSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """A stored file whose bytes no longer hash to the recorded sha256 answers 500
    ``artifact_corrupt`` (and is logged), never the bytes under a false ``X-Content-SHA256``."""
    corrupt_in_place(settings, hashlib.sha256(CONTENT).hexdigest())
    with caplog.at_level("ERROR", logger="sandpit.api"):
        response = client.get(f"/api/v1/jobs/{job_with_artifacts}/artifacts/dist/app.tar")
    assert_refused_as_corrupt(response)
    assert "X-Content-SHA256" not in response.headers
    assert any("does not match its sha256" in r.getMessage() for r in caplog.records)


def test_corruption_after_a_verified_download_is_noticed(
    client: httpx.Client, job_with_artifacts: str, settings: ApiSettings
) -> None:
    """The check is cached per file version: a file changed after it was verified is checked again."""
    url = f"/api/v1/jobs/{job_with_artifacts}/artifacts/dist/app.tar"
    first = client.get(url)
    assert first.status_code == 200 and first.content == CONTENT
    assert first.headers["X-Content-SHA256"] == hashlib.sha256(CONTENT).hexdigest()
    corrupt_in_place(settings, hashlib.sha256(CONTENT).hexdigest())
    assert_refused_as_corrupt(client.get(url))


def test_symlink_at_the_stored_name_is_not_followed(
    client: httpx.Client, job_with_artifacts: str, settings: ApiSettings
) -> None:
    """A symlink where the content should be is not followed to what it points at."""
    sha = hashlib.sha256(CONTENT).hexdigest()
    stored = settings.artifacts_dir / sha[:2] / sha
    stored.unlink()
    stored.symlink_to(settings.state_dir / "secret.txt")
    response = client.get(f"/api/v1/jobs/{job_with_artifacts}/artifacts/dist/app.tar")
    assert response.status_code in (404, 500), response.text
    assert b"do not serve" not in response.content


def test_an_expired_artifact_is_gone_before_the_sweeper_runs(
    client: httpx.Client, engine: Engine, job_with_artifacts: str
) -> None:
    """Past its expires_at an artifact is no longer listed, in the job, in the run, nor served,
    though its row and file are still there for the sweeper (as GitLab: expired is gone)."""
    import datetime as dt

    from sqlmodel import Session, select

    from pipelines.store.models import Artifact

    with Session(engine) as session:
        for row in session.exec(select(Artifact).where(Artifact.job_id == job_with_artifacts)):
            row.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
            session.add(row)
        session.commit()
    assert client.get(f"/api/v1/jobs/{job_with_artifacts}/artifacts").json()["artifacts"] == []
    assert client.get(f"/api/v1/jobs/{job_with_artifacts}").json()["artifacts"] == []
    assert client.get(f"/api/v1/jobs/{job_with_artifacts}/artifacts/dist/app.tar").status_code == 404
    run_id = client.get(f"/api/v1/jobs/{job_with_artifacts}").json()["run_id"]
    assert all(job["artifacts"] == [] for job in client.get(f"/api/v1/runs/{run_id}").json()["jobs"])
