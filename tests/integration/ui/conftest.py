"""UI fixtures: the API fixtures (real redis-server, SQLite file and PostgreSQL, uvicorn on
loopback) for the HTTP-level tests; the browser tests start the whole service themselves
(``api``: a worker and ``python -m api``; ``browser``: headless chromium; see browsing.py)."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.api.conftest import anon, client, engine, live, rds, redis_url, settings  # noqa: F401
from tests.integration.service.conftest import Service, redis, service  # noqa: F401
from tests.integration.ui.browsing import ApiProcess, headless_chromium, started_api


@pytest.fixture
def api(service: Service) -> Iterator[ApiProcess]:  # noqa: F811
    yield from started_api(service)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    yield from headless_chromium(tmp_path)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """chromium and httpx reach the loopback server directly, whatever proxy the machine sets."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("SE_AVOID_STATS", "true")
