"""A job's artifacts as one archive (``artifacts.zip``, ``artifacts.tar.gz``), streamed and checked
against their sha256; and the job's JUnit summary on GET of the job."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile

import httpx
import pytest
from sqlalchemy.engine import Engine

from api.settings import ApiSettings
from tests.integration.api.conftest import claim, create, finish
from tests.integration.api.test_artifacts import store_blob

FILES = {"dist/app.tar": b"\x00binary\n" * 1000, "dist/notes/ünïcode name.txt": b"hello\n",
         "deep/" + "d/" * 60 + "leaf.txt": b"a long path\n"}


@pytest.fixture
def job_with_files(client: httpx.Client, engine: Engine, settings: ApiSettings) -> str:
    job_id: str = create(client, "solo:\n  script: [make]\n  artifacts: {paths: [dist/]}\n")["jobs"][0]["id"]
    artifacts = [{"path": p, "size": len(c), "sha256": store_blob(settings, c)} for p, c in FILES.items()]
    tests = {"tests": 3, "passed": 1, "failed": 1, "errored": 1, "skipped": 0, "files": ["out/report.xml"],
             "problems": [], "failures": [{"name": "t.a", "kind": "failed", "message": "boom", "report": "r"},
                                          {"name": "t.b", "kind": "errored", "message": "setup", "report": "r"}]}
    finish(engine, job_id, claim(engine, job_id), artifacts=artifacts, tests=tests)
    return job_id


def test_zip_holds_every_artifact_under_its_path(client: httpx.Client, job_with_files: str) -> None:
    response = client.get(f"/api/v1/jobs/{job_with_files}/artifacts.zip")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert f'filename="job-{job_with_files}-artifacts.zip"' in response.headers["content-disposition"]
    assert "content-length" not in response.headers  # streamed as made, not built first
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.testzip() is None
        assert {name: archive.read(name) for name in archive.namelist()} == FILES


def test_tar_gz_holds_every_artifact_under_its_path(client: httpx.Client, job_with_files: str) -> None:
    response = client.get(f"/api/v1/jobs/{job_with_files}/artifacts.tar.gz")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
        members = archive.getmembers()
        assert all(m.isreg() and m.mode == 0o644 for m in members)
        got = {m.name: archive.extractfile(m).read() for m in members}  # type: ignore[union-attr]
    assert got == FILES


def test_a_large_artifact_streams_in_pieces(client: httpx.Client, engine: Engine, settings: ApiSettings) -> None:
    """A 24 MiB artifact arrives in many pieces, each far smaller than the file (no whole-archive
    buffer), and intact."""
    job_id: str = create(client, "solo:\n  script: [make]\n")["jobs"][0]["id"]
    content = os.urandom(24 * 1024 * 1024)
    finish(engine, job_id, claim(engine, job_id),
           artifacts=[{"path": "big.bin", "size": len(content), "sha256": store_blob(settings, content)}])
    for suffix in ("zip", "tar.gz"):
        pieces = []
        with client.stream("GET", f"/api/v1/jobs/{job_id}/artifacts.{suffix}") as response:
            assert response.status_code == 200
            pieces = list(response.iter_raw())
        body = b"".join(pieces)
        assert len(pieces) > 8 and max(len(p) for p in pieces) < 8 * 1024 * 1024, (suffix, len(pieces))
        if suffix == "zip":
            with zipfile.ZipFile(io.BytesIO(body)) as archive:
                assert hashlib.sha256(archive.read("big.bin")).digest() == hashlib.sha256(content).digest()
        else:
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as archive:
                data = archive.extractfile("big.bin").read()  # type: ignore[union-attr]
                assert hashlib.sha256(data).digest() == hashlib.sha256(content).digest()


@pytest.mark.parametrize("suffix", ["zip", "tar.gz"])
def test_a_damaged_store_sends_no_archive(client: httpx.Client, job_with_files: str, settings: ApiSettings,
                                          suffix: str) -> None:
    """A stored file that no longer matches its sha256: 500 artifact_corrupt before any byte; a
    missing one: 404."""
    sha = hashlib.sha256(FILES["dist/app.tar"]).hexdigest()
    stored = settings.artifacts_dir / sha[:2] / sha
    with open(stored, "r+b") as f:
        f.write(b"EVIL")
    response = client.get(f"/api/v1/jobs/{job_with_files}/artifacts.{suffix}")
    assert response.status_code == 500 and response.json()["error"] == "artifact_corrupt"
    stored.unlink()
    response = client.get(f"/api/v1/jobs/{job_with_files}/artifacts.{suffix}")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_a_job_without_artifacts_or_an_unknown_job_is_404(client: httpx.Client, engine: Engine) -> None:
    job_id: str = create(client, "solo:\n  script: [make]\n")["jobs"][0]["id"]
    finish(engine, job_id, claim(engine, job_id))
    for url in (f"/api/v1/jobs/{job_id}/artifacts.zip", "/api/v1/jobs/nope/artifacts.tar.gz"):
        response = client.get(url)
        assert response.status_code == 404, response.text


def test_archives_need_a_token(anon: httpx.Client, job_with_files: str) -> None:
    assert anon.get(f"/api/v1/jobs/{job_with_files}/artifacts.zip").status_code == 401


def test_the_job_record_carries_its_test_report(client: httpx.Client, job_with_files: str) -> None:
    """GET of the job returns the JUnit summary the worker recorded: counts and the failed tests."""
    job = client.get(f"/api/v1/jobs/{job_with_files}").json()
    assert {k: job["tests"][k] for k in ("tests", "passed", "failed", "errored", "skipped")} == {
        "tests": 3, "passed": 1, "failed": 1, "errored": 1, "skipped": 0}
    assert [(f["name"], f["kind"], f["message"]) for f in job["tests"]["failures"]] == [
        ("t.a", "failed", "boom"), ("t.b", "errored", "setup")]
    run = client.get(f"/api/v1/runs/{job['run_id']}").json()
    assert run["jobs"][0]["tests"]["failed"] == 1
