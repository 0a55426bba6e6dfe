"""The mirror's URL and commit checks refuse what git must never be pointed at (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.forges.mirror import FetchFailed, UnsupportedUrl, check_clone_url, read_pipeline_file

SHA = "a" * 40


@pytest.mark.parametrize("url", [
    "file:///etc", "/srv/git/repo.git", "ext::sh -c touch% /tmp/pwned", "ssh://git@host/o/r.git",
    "git@github.com:o/r.git", "fd::3", "https://host/o/r.git\n--upload-pack=x", "-uhttps://x", "",
])
def test_refused_transports(url: str, tmp_path: Path) -> None:
    """file://, local paths, ext::, ssh, fd:: and URLs with control characters never reach git."""
    with pytest.raises(UnsupportedUrl):
        check_clone_url(url)
    with pytest.raises(UnsupportedUrl):
        read_pipeline_file(tmp_path, "repo-1", url, SHA, [".gitlab-ci.yml"])
    assert not (tmp_path / "repo-1.git").exists()


@pytest.mark.parametrize("url", ["git://127.0.0.1:9418/o/r.git", "http://127.0.0.1/o/r", "https://h.example/o/r.git"])
def test_allowed_transports(url: str) -> None:
    assert check_clone_url(url) == url


@pytest.mark.parametrize("sha", ["main", "HEAD", "a" * 39, "--upload-pack=touch", "A" * 40])
def test_only_full_commit_ids_are_fetched(sha: str, tmp_path: Path) -> None:
    """A ref name or option never reaches ``git fetch``: only a full lower-case commit id."""
    with pytest.raises(FetchFailed, match="not a commit id"):
        read_pipeline_file(tmp_path, "repo-1", "https://h.example/o/r.git", sha, [".gitlab-ci.yml"])
