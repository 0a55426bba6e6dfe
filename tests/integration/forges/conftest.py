"""Forge fixtures: a throwaway redis-server (the API's), a git daemon and a status-recording forge on
loopback, the API under uvicorn in a thread with its status sender."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.settings import ApiSettings, parse_tokens
from pipelines.store.db import migrate
from tests.integration.api.conftest import TOKENS, TRUSTED_TOKEN, LiveServer, redis_url, serve_in_thread
from tests.integration.forges.forge_server import ForgeServer, forge_server
from tests.integration.forges.gitserver import GitServer, git_server

__all__ = ["redis_url"]  # the session's redis-server fixture, shared with the API tests
FORGE_TOKEN = "forge-api-token-7a1c"


@pytest.fixture
def git(tmp_path: Path) -> Iterator[GitServer]:
    with git_server(tmp_path / "git") as server:
        yield server


@pytest.fixture
def forge() -> Iterator[ForgeServer]:
    with forge_server(FORGE_TOKEN) as server:
        yield server


@pytest.fixture
def api_settings(db_url: str, redis_url: str, tmp_path: Path) -> ApiSettings:
    migrate(db_url)
    state = tmp_path / "state"
    state.mkdir()
    return ApiSettings(database_url=db_url, redis_url=redis_url, state_dir=state, tokens=parse_tokens(TOKENS),
                       max_body_bytes=256 * 1024, public_url="http://sandpit.test",
                       max_archive_bytes=256 * 1024)


@pytest.fixture
def api(api_settings: ApiSettings) -> Iterator[LiveServer]:
    with serve_in_thread(api_settings) as server:
        yield server


@pytest.fixture
def admin(api: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {TRUSTED_TOKEN}"}, timeout=60) as c:
        yield c
